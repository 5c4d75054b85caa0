#!/usr/bin/env python3
"""PyTorch reference for dptrain's benchmarks: the examples/mnist network and recipe (conv 32/64
3x3, fc 9216-128-10, dropout, Adadelta lr 1.0, StepLR 0.7), timed per training step after warm-up,
printing one JSON object per mode in the same format as `dptrain bench`.

Modes:
  examples  - as pytorch/examples mnist/main.py runs it: torchvision MNIST dataset, DataLoader
              (1 worker, pinned memory, shuffle), host-to-device copy per batch
  resident  - the whole dataset normalised on the GPU once, batches indexed on the device (eager)
  graph     - resident, with the whole step (batch gather, forward, backward, a capturable
              optimizer) captured once with torch.cuda.graph and replayed: what a strong PyTorch
              user writes, and the fair peer of dptrain's graph-replayed step
  cpu       - the same step on the CPU with --threads threads

--net mnist_cnn (default: examples/mnist, Adadelta), lenet5 (configs/lenet5.yaml: SGD with
Nesterov momentum and weight decay) or mnist_bn (configs/mnist_bn.yaml: examples/mnist with
BatchNorm after each convolution and fc1, Adadelta; PyTorch's BatchNorm normalises the whole batch,
dptrain's config ghost groups of 32: the same work per element); --precision tf32 allows TF32 in
cuDNN and cuBLAS.

  python3 bench/pytorch_reference.py --data data/mnist --mode resident --mode graph --batch 1024
"""
import argparse
import gzip
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """pytorch/examples mnist/main.py's Net, unchanged."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class LeNet5(nn.Module):
    """configs/lenet5.yaml: conv 6@5x5 pad 2, pool, conv 16@5x5, pool, fc 120, 84, 10, ReLUs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


class MnistBN(nn.Module):
    """configs/mnist_bn.yaml: examples/mnist's Net with BatchNorm2d after conv1 and conv2 and
    BatchNorm1d after fc1; attribute names are dptrain's layer names, so its final.safetensors
    loads with load_state_dict unchanged (bench/pytorch_bn_check.py)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.bn2 = nn.BatchNorm2d(64)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.bn3 = nn.BatchNorm1d(128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.bn3(self.fc1(x)))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def make_model(args, device, capturable=False):
    if args.net == "mnist_bn":
        model = MnistBN().to(device)
        return model, torch.optim.Adadelta(model.parameters(), lr=1.0, capturable=capturable)
    if args.net == "lenet5":
        model = LeNet5().to(device)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model = Net().to(device)
    return model, torch.optim.Adadelta(model.parameters(), lr=1.0, capturable=capturable)


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, name):
    for p in (os.path.join(data_dir, name), os.path.join(data_dir, name + ".gz")):
        if os.path.exists(p):
            return p
    raise SystemExit(f"{data_dir}: {name}[.gz] not found (launch/get_mnist.sh)")


def timed_steps(step, warmup, steps, sync):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def report(mode, device_name, batch, times, extra=None):
    med = statistics.median(times)
    out = {"impl": "pytorch", "mode": mode, "device": device_name, "batch": batch,
           "steps": len(times), "ms_per_step": med, "ms_per_step_min": min(times), "ms_per_step_max": max(times),
           "images_per_second": 1000.0 * batch / med, "torch": torch.__version__}
    out.update(extra or {})
    print(json.dumps(out), flush=True)


def make_step(model, optimizer, device):
    def step_on(x, y):
        optimizer.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
    return step_on


def run_resident(args, device):
    images = torch.from_numpy(read_idx(find(args.data, "train-images-idx3-ubyte")).copy())
    labels = torch.from_numpy(read_idx(find(args.data, "train-labels-idx1-ubyte")).astype(np.int64))
    x_all = ((images.float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1).to(device)
    y_all = labels.to(device)
    model, optimizer = make_model(args, device)
    step_on = make_step(model, optimizer, device)
    perm = torch.randperm(x_all.shape[0], device=device)
    cursor = [0]

    def step():
        i = cursor[0] % (x_all.shape[0] // args.batch)
        idx = perm[i * args.batch:(i + 1) * args.batch]
        cursor[0] += 1
        step_on(x_all[idx], y_all[idx])

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return timed_steps(step, args.warmup, args.steps, sync)


def run_graph(args, device):
    images = torch.from_numpy(read_idx(find(args.data, "train-images-idx3-ubyte")).copy())
    labels = torch.from_numpy(read_idx(find(args.data, "train-labels-idx1-ubyte")).astype(np.int64))
    x_all = ((images.float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1).to(device)
    y_all = labels.to(device)
    model, optimizer = make_model(args, device, capturable=True)
    perm = torch.randperm(x_all.shape[0], device=device)
    batches = x_all.shape[0] // args.batch
    idx = perm[:args.batch].clone()  # the step's sample indices: the graph's one input

    def body():
        optimizer.zero_grad(set_to_none=False)
        loss = F.nll_loss(model(x_all[idx]), y_all[idx])
        loss.backward()
        optimizer.step()

    # Warm-up on a side stream (optimizer state, cuDNN/cuBLAS plans), then capture, as PyTorch's
    # CUDA graphs documentation does for whole-network capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    cursor = [0]

    def step():
        i = cursor[0] % batches
        cursor[0] += 1
        idx.copy_(perm[i * args.batch:(i + 1) * args.batch])
        graph.replay()

    return timed_steps(step, args.warmup, args.steps, torch.cuda.synchronize)


def run_examples(args, device):
    from torchvision import datasets, transforms
    root = tempfile.mkdtemp(prefix="mnist_tv_")
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = find(args.data, name)
        opener = gzip.open if src.endswith(".gz") else open
        with opener(src, "rb") as f, open(os.path.join(raw, name), "wb") as g:
            shutil.copyfileobj(f, g)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset = datasets.MNIST(root, train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=1,
                                         pin_memory=True)
    model, optimizer = make_model(args, device)
    step_on = make_step(model, optimizer, device)
    it = [iter(loader)]

    def step():
        try:
            x, y = next(it[0])
        except StopIteration:
            it[0] = iter(loader)
            x, y = next(it[0])
        step_on(x.to(device), y.to(device))

    times = timed_steps(step, args.warmup, args.steps, torch.cuda.synchronize)
    shutil.rmtree(root, ignore_errors=True)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--mode", choices=["examples", "resident", "graph", "cpu"], action="append")
    p.add_argument("--net", choices=["mnist_cnn", "lenet5", "mnist_bn"], default="mnist_cnn")
    p.add_argument("--precision", choices=["float32", "tf32"], nargs="+", default=["float32"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch", type=int, nargs="+", default=[64], help="one run per batch size")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    for precision in args.precision:
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = True
        extra = {"config": args.net, "precision": precision}
        for batch in args.batch:
            one = argparse.Namespace(**vars(args))
            one.batch = batch
            torch.manual_seed(1)
            for mode in args.mode or ["resident"]:
                if mode == "cpu":
                    if args.threads:
                        torch.set_num_threads(args.threads)
                    times = run_resident(one, torch.device("cpu"))
                    report("cpu", "cpu", batch, times, dict(extra, threads=torch.get_num_threads()))
                else:
                    run = {"resident": run_resident, "graph": run_graph, "examples": run_examples}[mode]
                    report(mode, torch.cuda.get_device_name(0), batch, run(one, torch.device("cuda")), extra)
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
