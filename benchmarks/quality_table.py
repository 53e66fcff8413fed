"""The quality tables of docs/models.md, from the bundled models' manifests (``metrics``).

    python -m benchmarks.quality_table            # Markdown on stdout

Every figure comes from ``models/<name>/manifest.json``, which ``genserve eval <name>
--update-manifest`` writes; the real-vs-real references (floor, IS, MMD, precision/recall of
as many real digits) are in each manifest too and are the same for every row of a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genserve.cli.defaults import DEFAULT_MODELS

# Rows in the order the tables show them; the note says what was asked for, a model's defaults
# filled in from its manifest (``{default_temperature}``, ``{default_guidance}``).
SAMPLERS = {
    "gaussian-mnist": "baseline",
    "vae-mnist": "",
    "dcgan-mnist": "",
    "stylegan-mnist": "ψ = 1",
    "realnvp-mnist": "T = {default_temperature:g}, its default",
    "pixelcnn-mnist": "labels 0..9 in turn, w = {default_guidance:g}",
    "cgan-mnist": "labels 0..9 in turn",
    "acgan-mnist": "labels 0..9 in turn",
    "ddpm-mnist": "1000 DDPM steps",
    "ddpm-cond-mnist": "labels 0..9 in turn, w = {default_guidance:g}, 1000 DDPM steps",
    "ldm-mnist": "1000 DDPM steps",
}
TRANSLATORS = ("vae-mnist-reconstruct", "pix2pix-edges2mnist", "srresnet-mnist-x4", "srgan-mnist-x4")
HEADER = "| model | FID / floor | confident | classes | IS | MMD | precision | recall |"
RULE = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"


def _row(name: str, metrics: dict, note: str) -> str:
    asked = metrics.get("asked_class_fraction")
    classes = f"{metrics['num_classes_present']}" + (f" ({asked:.0%} asked)" if asked is not None else "")
    label = f"`{name}`" + (f" ({note})" if note else "")
    m = metrics
    quality = f"{m['fid_ratio']:.2f} | {m['confident_fraction']:.2f} | {classes}"
    more = f"{m['inception_score']:.2f} | {m['mmd']:.0f} | {m['precision']:.2f} | {m['recall']:.2f}"
    return f"| {label} | {quality} | {more} |"


def _reference(metrics: dict) -> str:
    return (
        f"real digits: FID floor {metrics['fid_floor']:.1f}, IS {metrics['inception_score_real']:.2f}, "
        f"MMD {metrics['mmd_real']:.0f}, precision {metrics['precision_real']:.2f}, recall {metrics['recall_real']:.2f}"
    )


def tables(models: Path) -> str:
    def manifest(name: str) -> dict:
        path = models / name / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}

    out = []
    for title, names in (("Samplers (100 samples)", SAMPLERS), ("Translators", dict.fromkeys(TRANSLATORS, ""))):
        rows = [
            (n, m["metrics"], note.format(**m))
            for n, note in names.items()
            if "inception_score" in (m := manifest(n)).get("metrics", {})
        ]
        out += [f"{title}; {_reference(rows[0][1])}", "", HEADER, RULE]
        out += [_row(n, m, note) for n, m, note in rows]
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    print(tables(parser.parse_args().models))


if __name__ == "__main__":
    main()
