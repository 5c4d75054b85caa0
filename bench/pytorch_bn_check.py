#!/usr/bin/env python3
"""A BatchNorm network's final.safetensors, loaded into the equivalent PyTorch module, gives the
test accuracy `dptrain eval` reports for it (issue 23's acceptance).

Loads RUN/final.safetensors (written by `dptrain train --config configs/mnist_bn.yaml`) with
safetensors.torch.load_file into bench/pytorch_reference.py's MnistBN through load_state_dict
(strict: every name must match, num_batches_tracked included, as an int64 scalar), evaluates the
t10k set in eval mode (running statistics) on the GPU, runs `dptrain eval --json` on the same file,
and prints one JSON line. Exit status 1 when the accuracies differ by more than --tolerance
(default 0.0002: two images of 10,000, for float rounding at a near-tie) or a check fails.

  python3 bench/pytorch_bn_check.py --run /tmp/dr/bn --dptrain build-dev/dptrain --data data/mnist
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import MnistBN, find, read_idx  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder holding final.safetensors")
    p.add_argument("--dptrain", default="build-dev/dptrain")
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--tolerance", type=float, default=0.0002)
    args = p.parse_args()
    weights = os.path.join(args.run, "final.safetensors")

    state = load_file(weights)
    problems = []
    tracked = [k for k in state if k.endswith(".num_batches_tracked")]
    if sorted(tracked) != ["bn1.num_batches_tracked", "bn2.num_batches_tracked", "bn3.num_batches_tracked"]:
        problems.append("num_batches_tracked tensors: %s" % tracked)
    for k in tracked:
        if state[k].dtype != torch.int64 or state[k].dim() != 0:
            problems.append("%s is %s of shape %s, not an int64 scalar" % (k, state[k].dtype, tuple(state[k].shape)))
    model = MnistBN()
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected name
    model = model.cuda().eval()

    images = torch.from_numpy(read_idx(find(args.data, "t10k-images-idx3-ubyte")).copy())
    labels = torch.from_numpy(read_idx(find(args.data, "t10k-labels-idx1-ubyte")).astype(np.int64)).cuda()
    x = ((images.float() * (1.0 / 255.0) - 0.1307) / 0.3081).unsqueeze(1).cuda()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], 1000):
            out = model(x[i:i + 1000])
            loss += float(F.nll_loss(out, labels[i:i + 1000], reduction="sum"))
            correct += int((out.argmax(1) == labels[i:i + 1000]).sum())
    torch_accuracy = correct / x.shape[0]

    r = subprocess.run([args.dptrain, "eval", "--checkpoint", weights, "--data", args.data, "--device", "cuda", "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        problems.append("dptrain eval rc=%d: %s" % (r.returncode, r.stderr.strip()[-300:]))
        ours = {}
    else:
        ours = json.loads(r.stdout.strip().splitlines()[-1])
    dptrain_accuracy = ours.get("test_accuracy", float("nan"))
    diff = abs(torch_accuracy - dptrain_accuracy)
    if not diff <= args.tolerance:
        problems.append("accuracy differs by %.4f" % diff)
    print(json.dumps({"check": "pytorch_bn", "weights": weights, "pytorch_accuracy": torch_accuracy,
                      "pytorch_loss": loss / x.shape[0], "dptrain_accuracy": dptrain_accuracy,
                      "dptrain_loss": ours.get("test_loss"), "difference": diff, "problems": problems}), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
