"""What ``seisbind quickstart`` prints once its work folder is ready: retrieval quality, whether the confidence is
calibrated, where the page and the API docs are, and requests to copy and paste."""

from __future__ import annotations

from typing import Any

from cli.quickstart import Layout


def calibration_line(cal: dict[str, Any]) -> str:
    """One line on the bundle's calibrated confidence (or why there is none)."""
    if cal.get("calibrated"):
        held_out = cal.get("held_out", cal["n"])  # stamps written before noisy copies: n held-out gathers
        copies = " and a noisy copy of each" if cal["n"] > held_out else ""
        return (f"  confidence calibrated on {held_out} held-out gathers{copies} (expected calibration error "
                f"{cal['ece_on_fit']:.3f} on them)")
    return f"  no calibrated confidence (confidence is null in answers): {cal.get('reason', 'not fitted')}"


def instructions(layout: Layout, results: dict[str, dict[str, Any]], host: str, port: int) -> str:
    """Retrieval quality, where the API docs are, and requests to copy and paste."""
    ev, idx = results["evaluate"], results["index"]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown}:{port}"
    query = results["example"]["query"]
    return "\n".join([
        "",
        f"SeisBind quickstart (work folder {layout.root})",
        f"  held-out retrieval, seismic -> velocity ({ev['queries']} test gathers vs their {ev['gallery_size']} "
        f"models): R@1 {ev['R@1']:.3f}  R@5 {ev['R@5']:.3f}  R@10 {ev['R@10']:.3f}",
        f"  descriptors inferred from the 5 nearest of {ev['bank_size']} bank models: "
        f"mean relative error {100 * ev['descriptor_mre']:.1f} %"
        + ("" if ev.get("blend_descriptor_mre") is None else
           f"; blended with the encoders' descriptor readout (the service's default) "
           f"{100 * ev['blend_descriptor_mre']:.1f} %"),
        calibration_line(results.get("calibrate", {})),
        f"  encoders {results['export']['bundle_id'][:12]}, index version {idx['version']} ({ev['bank_size']} models)",
        f"  report: {ev['report']}",
        "",
        f"Web page: {base}/   (the example gather is behind its 'Use the bundled example' button)",
        f"API docs: {base}/docs",
        "",
        "Try it (the example gather is a held-out test gather, float32 [1, 5, 1000, 70]):",
        f"  curl -s -X POST '{base}/retrieve?k=5' -H 'Content-Type: application/x-npy' \\",
        f"       --data-binary @{query}",
        "",
        "From Python:",
        "  import numpy as np",
        "  from service.client import SeisBindClient",
        f"  with SeisBindClient('{base}') as client:",
        f"      hits = client.retrieve(np.load('{query}'), k=5)",
        "      print([(n['id'], round(n['score'], 3)) for n in hits['results'][0]['neighbors']])",
        "",
    ])
