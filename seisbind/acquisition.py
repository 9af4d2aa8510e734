"""OpenFWI acquisition geometry and data conventions (docs/data.md)."""

from __future__ import annotations

NZ = 70
"""Velocity-model depth cells."""
NX = 70
"""Velocity-model lateral cells."""
DX = 10.0
"""Grid spacing, m."""
VELOCITY_SHAPE = (1, NZ, NX)
"""One velocity model: (channel, depth z, lateral x), float32, m/s."""

N_SHOTS = 5
NT = 1000
DT = 0.001
"""Time step and sample interval, s."""
N_RECEIVERS = 70
GATHER_SHAPE = (N_SHOTS, NT, N_RECEIVERS)
"""One shot gather: (shot, time, receiver), float32."""

SOURCE_X = (0, 17, 34, 52, 69)
"""Lateral cells of the five sources."""
SOURCE_Z = 1
RECEIVER_X = tuple(range(N_RECEIVERS))
RECEIVER_Z = 1

PEAK_FREQUENCY = 15.0
"""Ricker peak frequency, Hz."""
WAVELET_LENGTH = 147
"""Ricker length in samples, centred, so its peak is at sample 73 (t = 73 ms)."""
WAVELET_PEAK_TIME = (WAVELET_LENGTH // 2) * DT

V_MIN = 1500.0
V_MAX = 4500.0
"""Velocity range used for normalisation, m/s."""

FAMILY_DATA_RANGE: dict[str, tuple[float, float]] = {
    "flatvel-a": (-26.95, 52.77),
    "curvevel-a": (-27.11, 55.10),
    "flatfault-a": (-26.10, 50.86),
    "curvefault-a": (-26.48, 52.32),
}
"""OpenFWI's published global data extremes per family (the amplitude convention)."""
