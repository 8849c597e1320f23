"""Benchmark: the Logit lens and State pages of the real app in Debian's Chromium at a real model size, against the
forward pass (the real-size try of these two pages).

The same setup as `bench.bench_pages` (whose server, browser and timing it uses): a random RWKV-7 of the 0.1B shape
(12 x 768, vocabulary 65,536) served from a model folder, a ~1,031-token English prompt by link, each page opened by
its link (first render), then one change of each control. The baseline is the forward pass over the same prompt
(logits included, main thread, best of three). The server's memory is printed after each page.

    python -m bench.bench_lens_state_pages [--tokens 1031] [--keep] [--before REV]
"""
from __future__ import annotations

from bench import bench_pages as BP

PAGES = [
    ("/Logit_lens", [("token click", lambda p, n: BP.click_token(p, n // 2)),
                     ("log-probability radio", lambda p, n: BP.radio(p, "Cell shows the wanted token's",
                                                                      "log-probability")),
                     ("rank radio", lambda p, n: BP.radio(p, "Cell shows the wanted token's", "log10(rank + 1)")),
                     ("colour-blind toggle", lambda p, n: BP.toggle(p, "Colour-blind palette"))]),
    ("/State", [("token click", lambda p, n: BP.click_token(p, n // 2)),
                ("another token click", lambda p, n: BP.click_token(p, n // 3)),
                ("head", lambda p, n: BP.select(p, "Head", "2")),
                ("query radio", lambda p, n: BP.radio(p, "Query", "receptance")),
                ("log y toggle", lambda p, n: BP.toggle(p, "Log y")),
                ("layer", lambda p, n: BP.select(p, "Layer", "1"))]),
]


def main() -> int:
    """`bench_pages.main` (the same options: --tokens, --keep, --before REV, the shape) over these two pages."""
    BP.PAGES = PAGES  # `measure` walks the module's page list
    return BP.main()


if __name__ == "__main__":
    raise SystemExit(main())
