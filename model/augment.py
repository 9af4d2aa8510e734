"""Field-like augmentations of raw shot gathers, batched in torch on CPU or GPU, applied on the fly.

Gathers are [batch, shots, time, receivers] (OpenFWI: [b, 5, 1000, 70], dt = 1 ms) in any floating dtype; every
function returns a new tensor of the same shape, dtype and device. Training augments the seismic front end's
decimated gathers (dt = 8 ms, ``SeismicFrontEnd.decimate``), which is exact for everything linear (the front end's
low-pass and decimation commute with filters, scaling, muting and time shifts, and the signal lies below its
cut-off); white noise is the one thing the low-pass changes, so ``white_gain`` turns a raw-rate SNR into the power
the low-pass leaves of it. Randomness comes only from the given
``torch.Generator``: numbers are drawn on the generator's device, so the same seed on the same device gives the
same result. ``apply`` chains them in the order the field imposes: the source wavelet first (it acts on the clean
signal), then time shifts, amplitude and polarity, additive noise, and dead traces last (a dead channel records
nothing). Settings: ``model.config.AugmentConfig``.
"""

from __future__ import annotations

import math

import torch

from seisbind.acquisition import DT, PEAK_FREQUENCY

from model.config import AugmentConfig

MAX_GAIN_HZ = 50.0
"""``change_wavelet`` is exact below this frequency; above it the filter's gain is held at its value here, where
the 15 Hz Ricker has 4.5e-4 of its peak amplitude (a 20 Hz Ricker still 3 %), so numerical noise is not blown up."""
BAND_TAPER_HZ = 2.0
"""Width of the cosine tapers outside the band of band-limited noise."""


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"gathers: expected a floating tensor [batch, shots, time, receivers], got {x.dtype} "
                         f"{tuple(x.shape)}")


def _per_gather(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[b] values as [b, 1, 1, 1] float32 on x's device."""
    return v.to(x.device, torch.float32).reshape(-1, 1, 1, 1)


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def _power(x: torch.Tensor) -> torch.Tensor:
    """Mean power of every gather [b] (float32)."""
    return x.float().pow(2).mean(dim=(1, 2, 3))


def band_limit(noise: torch.Tensor, band_hz: tuple[float, float], dt: float = DT) -> torch.Tensor:
    """Noise [b, s, t, r] filtered along time to ``band_hz`` (flat inside, cosine tapers of BAND_TAPER_HZ outside;
    circular, as befits stationary noise)."""
    nt = noise.shape[2]
    f = torch.fft.rfftfreq(nt, dt, device=noise.device)
    lo, hi = band_hz
    dist = torch.clamp(torch.maximum(lo - f, f - hi), min=0) / BAND_TAPER_HZ  # 0 inside, tapers out to 1
    gain = torch.where(dist < 1, 0.5 * (1 + torch.cos(math.pi * dist.clamp(max=1))), torch.zeros_like(f))
    spec = torch.fft.rfft(noise.float(), dim=2) * gain[None, None, :, None]
    return torch.fft.irfft(spec, n=nt, dim=2)


def add_noise(x: torch.Tensor, snr_db: torch.Tensor, generator: torch.Generator,
              band_hz: tuple[float, float] | None = None, band: torch.Tensor | None = None, dt: float = DT,
              white_gain: float = 1.0) -> torch.Tensor:
    """Gathers plus Gaussian noise at exactly ``snr_db`` [b] per gather: 10 log10(mean(x^2) / mean(n^2)) over the
    gather. White noise, or band-limited to ``band_hz`` for the gathers flagged in ``band`` [b] bool (all, if
    ``band`` is None and ``band_hz`` is given). White noise gets ``white_gain`` times the power (for decimated
    gathers: the front end's ``white_noise_gain``, what its low-pass leaves of raw-rate white noise). A gather of
    zeros stays zeros (its SNR is undefined)."""
    _check(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device)
    if band_hz is not None:
        flag = torch.ones(len(x), dtype=torch.bool) if band is None else band
        if flag.any():
            rows = flag.nonzero().squeeze(1).to(noise.device)
            noise[rows] = band_limit(noise[rows], band_hz, dt)
        gain = torch.where(flag.to(x.device), 1.0, white_gain)
    else:
        gain = torch.full((len(x),), white_gain, device=x.device)
    target = _power(x) * gain / 10 ** (_per_gather(snr_db, x).reshape(-1) / 10)
    k = torch.sqrt(target / _power(noise).clamp(min=1e-30))
    return (x.float() + noise * _per_gather(k, x)).to(x.dtype)


def mute_traces(x: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gathers with exactly ``counts[i]`` traces of every shot of gather i zeroed (a random set per shot)."""
    _check(x)
    b, s, _, r = x.shape
    if counts.numel() and (int(counts.max()) > r or int(counts.min()) < 0):
        raise ValueError(f"mute counts must lie in 0..{r} (got {counts.tolist()})")
    rank = _rand((b, s, r), generator).argsort(dim=2).argsort(dim=2).to(x.device)
    dead = rank < counts.to(x.device).reshape(-1, 1, 1)
    return x.masked_fill(dead[:, :, None, :], 0)


def time_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Gathers with shot j of gather i delayed by ``shifts[i, j]`` samples (negative: earlier), zero-padded.
    Whole samples move exactly; fractional ones by a band-limited (Fourier) shift with zero padding."""
    _check(x)
    if bool(((shifts - shifts.round()).abs() > 1e-6).any()):
        return _fourier_shift(x, shifts)
    shifts = shifts.round().long()
    b, s, t, r = x.shape
    src = torch.arange(t, device=x.device)[None, None, :] - shifts.to(x.device).reshape(b, s, 1)
    valid = (src >= 0) & (src < t)
    out = torch.gather(x, 2, src.clamp(0, t - 1)[..., None].expand(b, s, t, r))
    return out * valid[..., None].to(x.dtype)


def _fourier_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Band-limited delay by fractional ``shifts`` [b, s] samples (zero-padded to twice the length, no wrap)."""
    b, s, t, r = x.shape
    n_fft = 1 << (2 * t - 1).bit_length()
    f = torch.fft.rfftfreq(n_fft, device=x.device)  # cycles per sample
    phase = torch.exp(-2j * math.pi * f[None, None, :] * shifts.to(x.device, torch.float32).reshape(b, s, 1))
    spec = torch.fft.rfft(x.float(), n=n_fft, dim=2) * phase[..., None]
    return torch.fft.irfft(spec, n=n_fft, dim=2)[:, :, :t].to(x.dtype)


def ricker_ratio(freq: torch.Tensor, peak_hz: torch.Tensor, source_hz: float = PEAK_FREQUENCY) -> torch.Tensor:
    """Filter [b, f] turning a ``source_hz`` Ricker into a ``peak_hz`` [b] one of the same peak amplitude and time:
    the ratio of their amplitude spectra (f/fp)^2 exp(-f^2/fp^2)/fp, real and zero-phase; the gain is held beyond
    MAX_GAIN_HZ."""
    fp = peak_hz.reshape(-1, 1).double()
    f = freq.double().clamp(max=MAX_GAIN_HZ)[None]
    return ((source_hz / fp) ** 3 * torch.exp(f ** 2 * (1 / source_hz ** 2 - 1 / fp ** 2))).float()


def change_wavelet(x: torch.Tensor, peak_hz: torch.Tensor, source_hz: float = PEAK_FREQUENCY,
                   dt: float = DT, shifts: torch.Tensor | None = None) -> torch.Tensor:
    """Gathers recorded with a ``source_hz`` Ricker source, converted to a ``peak_hz`` [b] Ricker (same peak time):
    a zero-phase filter, the ratio of the two Ricker spectra, applied in the frequency domain with zero padding
    (no wrap-around). Exact for noise-free data below MAX_GAIN_HZ, since the data are linear in the source. With
    ``shifts`` [b, s] (samples, fractional allowed), each shot is also delayed in the same pass."""
    _check(x)
    b, s, nt, _ = x.shape
    n_fft = 1 << (2 * nt - 1).bit_length()
    f = torch.fft.rfftfreq(n_fft, dt, device=x.device)
    h = ricker_ratio(f, peak_hz.to(x.device), source_hz)[:, None, :].to(torch.complex64)
    if shifts is not None:
        cycles = torch.fft.rfftfreq(n_fft, device=x.device)[None, None, :]  # per sample
        h = h * torch.exp(-2j * math.pi * cycles * shifts.to(x.device, torch.float32).reshape(b, s, 1))
    spec = torch.fft.rfft(x.float(), n=n_fft, dim=2) * h[..., None]
    return torch.fft.irfft(spec, n=n_fft, dim=2)[:, :, :nt].to(x.dtype)


def _between(lo: float, hi: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * _rand((n,), generator)


def apply(gathers: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig | None = None, dt: float = DT,
          white_gain: float = 1.0) -> torch.Tensor:
    """Every augmentation of ``cfg`` (default ``AugmentConfig()``), each hitting a gather with its probability,
    on gathers sampled every ``dt`` seconds (``white_gain``: see :func:`add_noise`).

    The random draws do not depend on the data: the same seed (generator device), batch size and settings give the
    same perturbations. Returns a new tensor of the input's shape, dtype and device.
    """
    _check(gathers)
    cfg = cfg or AugmentConfig()
    b, s, _, r = gathers.shape
    if cfg.mute_traces[1] > r:
        raise ValueError(f"mute_traces {cfg.mute_traces}: at most the {r} receivers of a shot")
    hit = {k: (_rand((b,), generator) < getattr(cfg, k)).cpu() for k in
           ("wavelet_p", "shift_p", "scale_p", "polarity_p", "noise_p", "band_p", "mute_p")}
    if cfg.clean_p > 0:  # drawn only when asked for, so that older settings give the same perturbations as before
        clean = (_rand((b,), generator) < cfg.clean_p).cpu()
        hit = {k: v & ~clean for k, v in hit.items()}
    peak = torch.where(hit["wavelet_p"], _between(*cfg.peak_hz, b, generator).cpu(), torch.tensor(PEAK_FREQUENCY))
    shifts = torch.randint(-cfg.max_shift_ms, cfg.max_shift_ms + 1, (b, s), generator=generator,
                           device=generator.device).cpu() * hit["shift_p"][:, None]
    log_scale = _between(math.log(cfg.scale[0]), math.log(cfg.scale[1]), b, generator).cpu()
    factor = torch.where(hit["scale_p"], log_scale.exp(), 1.0) * torch.where(hit["polarity_p"], -1.0, 1.0)
    snr = _between(*cfg.snr_db, b, generator).cpu()
    mutes = torch.randint(cfg.mute_traces[0], cfg.mute_traces[1] + 1, (b,), generator=generator,
                          device=generator.device).cpu() * hit["mute_p"]
    x = gathers.clone()
    shifts_t = shifts * (1e-3 / dt)  # samples at dt
    whole = bool(((shifts_t - shifts_t.round()).abs() < 1e-6).all())
    spectral = hit["wavelet_p"] | (hit["shift_p"] & (shifts != 0).any(1) & (not whole))
    if spectral.any():  # only the gathers it changes: one FFT pass for the wavelet and fractional shifts
        rows = spectral.nonzero().squeeze(1).to(x.device)
        x[rows] = change_wavelet(x[rows], peak[spectral], dt=dt, shifts=None if whole else shifts_t[spectral])
    if whole:
        x = time_shift(x, shifts_t)
    x = (x.float() * _per_gather(factor, x)).to(gathers.dtype)
    noisy = hit["noise_p"]
    if noisy.any():
        rows = noisy.nonzero().squeeze(1).to(x.device)
        x[rows] = add_noise(x[rows], snr[noisy], generator, cfg.band_hz, hit["band_p"][noisy], dt, white_gain)
    return mute_traces(x, mutes, generator)
