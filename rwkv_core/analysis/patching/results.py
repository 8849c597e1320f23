"""One patching result: a grid per site of the logit difference when that (token, layer) of the clean run is
patched into the corrupted run, raw and normalised, with the baselines and settings; saved as .npz or CSV."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

import numpy as np

from rwkv_core.errors import InputError

METHODS = ("exact", "atp")


@dataclass
class PatchResult:
    """raw[site] [Tc, L]: LD (exact) or its first-order estimate LD_corrupt + AtP (atp) with clean token t's value
    patched in at layer l (0-based); NaN where nothing was computed (a clean token without a partner in the
    corrupted prompt, or a token not selected). `grid(site)` is the normalised value, 0 = corrupted, 1 = clean."""

    raw: dict[str, np.ndarray]
    clean_value: float
    corrupt_value: float
    method: str
    clean_labels: list[str]
    corrupt_labels: list[str]
    settings: dict
    complete: bool = True
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def sites(self) -> list[str]:
        return list(self.raw)

    def grid(self, site: str) -> np.ndarray:
        if site not in self.raw:
            raise InputError(f"this result has no site {site!r}; it has {', '.join(self.raw)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.raw[site] - self.corrupt_value) / (self.clean_value - self.corrupt_value)

    def meta(self) -> dict:
        return {**self.settings, "method": self.method, "complete": self.complete, "seconds": self.seconds,
                "clean_tokens": self.clean_labels, "corrupt_tokens": self.corrupt_labels, "warnings": self.warnings,
                "conventions": "grid_{site}[t, l]: clean token t (0-based), layer l (0-based); normalised "
                               "(LD - corrupt_value) / (clean_value - corrupt_value); raw_{site}: LD = "
                               "logit(answer) - logit(counter) at the last token"}

    def to_npz(self, path) -> None:
        """grid_{site} and raw_{site} [T, L] (float64), clean_value, corrupt_value and meta (a JSON string)."""
        arrays = {"clean_value": np.float64(self.clean_value), "corrupt_value": np.float64(self.corrupt_value),
                  "meta": np.str_(json.dumps(self.meta()))}
        for s in self.raw:
            arrays[f"grid_{s}"] = self.grid(s)
            arrays[f"raw_{s}"] = self.raw[s]
        np.savez(path, **arrays)

    @classmethod
    def from_npz(cls, path) -> "PatchResult":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            raw = {k[4:]: z[k] for k in z.files if k.startswith("raw_")}
            settings = {k: v for k, v in meta.items() if k not in ("method", "complete", "seconds", "clean_tokens",
                                                                     "corrupt_tokens", "warnings", "conventions")}
            return cls(raw, float(z["clean_value"]), float(z["corrupt_value"]), meta["method"], meta["clean_tokens"],
                       meta["corrupt_tokens"], settings, meta["complete"], meta["seconds"], meta["warnings"])

    def to_csv(self) -> str:
        """Every site's grid as long CSV: site, token index, token, layer, normalised, raw."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["site", "token_index", "token", "layer", "normalised", "raw_logit_diff"])
        for s, raw in self.raw.items():
            g = self.grid(s)
            for t in range(raw.shape[0]):
                for l in range(raw.shape[1]):
                    w.writerow([s, t, self.clean_labels[t], l, repr(float(g[t, l])), repr(float(raw[t, l]))])
        return buf.getvalue()
