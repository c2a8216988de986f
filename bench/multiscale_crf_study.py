"""Arnab et al. §6–7 on the synthetic street scenes: scale transfer and the CRF's gradient masking.

Trains (once; reruns reuse the runs) a single-scale DeepLabv3-tiny, the same network trained at
scales 0.5/0.75/1 with max fusion (DeepLab v2's multiscale training), a PSPNet-tiny, and the
single-scale network fine-tuned with a mean-field CRF appended (CRF-RNN: FCN-8s + CRF trained
end to end); then runs

    harden study transfer-scales <single-scale> --other <multiscale-trained> --other <pspnet>
    harden study transfer-scales <multiscale-trained> --other <single-scale>
    harden study crf <single-scale>        (CRF appended after training, DeepLab's post-processing)
    harden study crf <crf-trained>         (its own CRF, CRF-RNN)

and leaves each study's JSON and PNG under OUT/<run>/study. docs/multiscale_crf.md reports them.

    python bench/multiscale_crf_study.py [--epochs 15] [--train-images 160] [--image-size 64x128]
        [--crf-epochs 3] [--images 32] [--out runs/arnab-study]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def harden(*args: str) -> int:
    command = [sys.executable, "-m", "harden", *args]
    print("$ harden " + " ".join(args), flush=True)
    return subprocess.run(command, check=False).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--crf-epochs", type=int, default=3, help="fine-tuning epochs with the CRF")
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--image-size", default="64x128")
    parser.add_argument("--images", type=int, default=32, help="validation images attacked")
    parser.add_argument("--out", type=Path, default=Path("runs/arnab-study"))
    args = parser.parse_args()

    runs = {
        "deeplab": ["--model", "deeplabv3_tiny"],
        "deeplab-ms": ["--model", "deeplabv3_tiny", "--scales", "0.5,0.75,1"],
        "pspnet": ["--model", "pspnet_tiny"],
    }
    common = ["--epochs", str(args.epochs), "--train-images", str(args.train_images), "--image-size", args.image_size,
              "--no-progress"]  # fmt: skip
    for name, options in runs.items():
        run_dir = args.out / name
        trained = (run_dir / "model.safetensors").exists()
        if not trained and harden("train", *options, *common, "--out", str(run_dir), "--overwrite") != 0:
            sys.exit(f"training {name} failed")
    # CRF-RNN: the single-scale network fine-tuned end to end with the CRF appended
    crf_run = args.out / "deeplab-crf"
    if not (crf_run / "model.safetensors").exists():
        tune = ["--epochs", str(args.crf_epochs), "--train-images", str(args.train_images), "--image-size",
                args.image_size, "--lr", "2e-4", "--no-progress"]  # fmt: skip
        options = ["--model", "deeplabv3_tiny", "--crf", "--init-from", str(args.out / "deeplab")]
        if harden("train", *options, *tune, "--out", str(crf_run), "--overwrite") != 0:
            sys.exit("training deeplab-crf failed")
    images = ["--images", str(args.images), "--no-progress"]
    harden("study", "transfer-scales", str(args.out / "deeplab"), "--other", str(args.out / "deeplab-ms"),
           "--other", str(args.out / "pspnet"), "--eps", "4/255,8/255", *images)  # fmt: skip
    harden("study", "transfer-scales", str(args.out / "deeplab-ms"), "--other", str(args.out / "deeplab"),
           "--eps", "4/255,8/255", *images)  # fmt: skip
    harden("study", "crf", str(args.out / "deeplab"), *images)  # exits 1 when it finds gradient masking
    harden("study", "crf", str(args.out / "deeplab-crf"), *images)


if __name__ == "__main__":
    main()
