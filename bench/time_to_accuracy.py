#!/usr/bin/env python3
"""Time to accuracy: trains one recipe (a dptrain config) over K seeds with dptrain and, in the same
call, with PyTorch (eager, and with the whole step captured in a CUDA graph), and reports for each
the mean, minimum and maximum test accuracy, the training + evaluation time, and the whole-process
wall time, with the ratios.

What the times count, for both sides alike:
  train_eval_s  model build, every training step and every test pass the recipe runs, with the data
                already on the device (the convention of the fastest published MNIST runs: data loading
                onto the GPU is left out). dptrain reports it in the run folder's summary.json.
  wall_s        the whole process, from exec to exit, measured here around the child process: for
                dptrain the CLI run as a user runs it; for PyTorch this script's worker (interpreter,
                `import torch`, CUDA start-up, data upload, the run, exit).

The PyTorch side is written to a strong user's standard: the same network (built from the run's
resolved config.yaml, state_dict names included), optimizer, schedule, label smoothing and
augmentation (per-sample random affine with affine_grid/grid_sample and random erasing, on the GPU);
the training and test sets resident on the GPU; the order of each epoch a randperm on the device;
cuDNN benchmark mode; TF32 as the config says. Graph mode warms up and captures one graph per batch
size (the full batch and the epoch's short last batch), then restores the initial weights and
optimizer state in place, so the warm-up steps do not count towards training; the learning rate and
Adam's beta1 are device tensors refreshed before each replay. Where the two sides differ by design it
is said in the output (BatchNorm: PyTorch normalises the whole batch; dptrain's ghost batches
normalise groups of group_size).

  python3 bench/time_to_accuracy.py --config configs/mnist_fast.yaml --seeds 10
  python3 bench/time_to_accuracy.py --config configs/mnist_best.yaml --seeds 5 --pytorch graph
  python3 bench/time_to_accuracy.py --config configs/mnist_fast.yaml --seeds 2 --device cpu --pytorch none

Output: one JSON object per run (side, mode, seed, accuracy, times), then one summary object per side
and mode, then a plain table. Exit status 1 when any run fails.
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time


# --------------------------------------------------------------------------------------------------
# The resolved config (run folder's config.yaml), read with a reader for the subset dptrain's to_yaml
# writes (block mappings, flow mappings on one line, flow lists, plain scalars): no PyYAML needed on
# the device, and 1e-06 is a number (PyYAML's YAML 1.1 rules read it as a string).

def _scalar(text):
    text = text.strip()
    if text.startswith(("'", '"')) and text.endswith(text[0]) and len(text) >= 2:
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _split_flow(body):
    """Splits 'a: 1, b: [1, 2], c: {d: 3}' at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _flow(text):
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        out = {}
        for part in _split_flow(text[1:-1]):
            key, _, value = part.partition(":")
            out[key.strip()] = _flow(value)
        return out
    if text.startswith("[") and text.endswith("]"):
        return [_flow(p) for p in _split_flow(text[1:-1])]
    return _scalar(text)


def _strip_comment(line):
    depth, quote = 0, None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def parse_yaml_subset(text):
    lines = []
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))

    def block(i, indent):
        if i < len(lines) and lines[i][1].startswith("- "):
            out = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                out.append(_flow(lines[i][1][2:]))
                i += 1
            return out, i
        out = {}
        while i < len(lines) and lines[i][0] == indent:
            key, _, value = lines[i][1].partition(":")
            i += 1
            if value.strip():
                out[key.strip()] = _flow(value)
            elif i < len(lines) and lines[i][0] > indent:
                out[key.strip()], i = block(i, lines[i][0])
            elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                out[key.strip()], i = block(i, indent)
            else:
                out[key.strip()] = None
        return out, i

    parsed, _ = block(0, lines[0][0] if lines else 0)
    return parsed


def load_config(path):
    with open(path) as f:
        text = f.read()
    return parse_yaml_subset(text)


# --------------------------------------------------------------------------------------------------
# dptrain's side: the CLI, one process per seed.

def error_line(stderr, returncode):
    """The line of a failed run's stderr that says what went wrong: the first Python exception's
    own line (the cause, where one exception led to another; PyTorch follows a CUDA error with
    hints, so the last line is rarely the error), dptrain's `error:` line, or the last line."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in lines:
        if re.match(r"^[\w.]*(Error|Exception)\b", line) or "error:" in line:
            return line
    return lines[-1] if lines else "exit %d" % returncode


def run_dptrain(args, seed):
    out = os.path.join(args.out, f"dptrain-seed{seed}")
    cmd = [args.dptrain, "train", "--config", args.config, "--out", out, "--device", args.device,
           "--set", f"train.seed={seed}"]
    for item in args.set or []:
        cmd += ["--set", item]
    if os.path.isdir(out):
        subprocess.run(["rm", "-rf", out], check=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    result = {"side": "dptrain", "mode": args.device, "seed": seed, "wall_s": wall, "out": out}
    if proc.returncode != 0:
        result["error"] = error_line(proc.stderr, proc.returncode)
        return result
    summary_path = os.path.join(out, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        result["accuracy"] = summary.get("test_accuracy")
        result["train_eval_s"] = summary.get("train_eval_seconds")
        result["steps"] = summary.get("steps")
    else:  # a dptrain without summary.json: the last metrics line's accuracy, no time
        with open(os.path.join(out, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f if line.strip()][-1]
        result["accuracy"] = last.get("test_accuracy")
    return result


# --------------------------------------------------------------------------------------------------
# PyTorch's side: this script re-run as a worker, one process per seed and mode.

def run_pytorch(args, seed, mode, resolved_config):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--resolved", resolved_config,
           "--seed", str(seed), "--data", args.data]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    result = {"side": "pytorch", "mode": mode, "seed": seed, "wall_s": wall}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        result["error"] = error_line(proc.stderr, proc.returncode)
        log = os.path.join(args.out, f"pytorch-{mode}-seed{seed}.err")
        with open(log, "w") as f:
            f.write(proc.stderr)
        result["stderr"] = log
        return result
    result.update(json.loads(lines[-1]))
    return result


def worker(args):
    import gzip  # noqa: PLC0415
    from collections import OrderedDict  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import torch.nn as nn  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    cfg = load_config(args.resolved)
    model_cfg, data_cfg, train_cfg = cfg["model"], cfg["data"], cfg["train"]
    device = torch.device("cuda")
    tf32 = train_cfg.get("precision", "float32") == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    def read_idx(name):
        for path in (os.path.join(args.data, name), os.path.join(args.data, name + ".gz")):
            if os.path.exists(path):
                opener = gzip.open if path.endswith(".gz") else open
                with opener(path, "rb") as f:
                    data = f.read()
                dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
                return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
        raise SystemExit(f"{args.data}: {name}[.gz] not found")

    mean, std = float(data_cfg["mean"]), float(data_cfg["std"])
    c, h, w = model_cfg["input"]

    def upload(prefix):
        x = torch.from_numpy(read_idx(f"{prefix}-images-idx3-ubyte").copy()).to(device)
        y = torch.from_numpy(read_idx(f"{prefix}-labels-idx1-ubyte").astype(np.int64)).to(device)
        return ((x.float() / 255.0 - mean) / std).view(-1, c, h, w), y

    x_train, y_train = upload("train")
    x_test, y_test = upload("t10k")
    torch.cuda.synchronize()
    t0 = time.perf_counter()  # model build, training and test passes from here

    # The network, with dptrain's layer names as module names (state_dict keys match).
    layers, notes = OrderedDict(), []
    probe = torch.zeros(1, c, h, w, device=device)
    for layer in model_cfg["layers"]:
        kind, name = layer["type"], layer["name"]
        if kind == "conv2d":
            module = nn.Conv2d(probe.shape[1], layer["out_channels"], layer["kernel"], layer.get("stride", 1),
                               layer.get("padding", 0))
        elif kind == "linear":
            module = nn.Linear(probe.shape[1], layer["out_features"])
        elif kind == "relu":
            module = nn.ReLU()
        elif kind == "maxpool2d":
            module = nn.MaxPool2d(layer["kernel"], layer.get("stride") or layer["kernel"], layer.get("padding", 0))
        elif kind == "avgpool2d":
            module = nn.AvgPool2d(layer["kernel"], layer.get("stride") or layer["kernel"], layer.get("padding", 0))
        elif kind == "global_avgpool":
            module = nn.AdaptiveAvgPool2d(1)
        elif kind == "dropout":
            module = nn.Dropout(layer["p"])
        elif kind == "flatten":
            module = nn.Flatten()
        elif kind in ("batchnorm2d", "batchnorm1d"):
            bn = nn.BatchNorm2d if kind == "batchnorm2d" else nn.BatchNorm1d
            module = bn(probe.shape[1], eps=layer.get("eps", 1e-5), momentum=layer.get("momentum", 0.1))
            if layer.get("group_size") and not layer.get("sync"):
                notes.append(f"{name}: PyTorch normalises the whole batch; dptrain groups of {layer['group_size']}")
        else:
            raise SystemExit(f"{args.resolved}: layer type '{kind}' has no PyTorch equivalent here")
        module = module.to(device)
        with torch.no_grad():
            probe = module.eval()(probe)
        layers[name] = module
    model = nn.Sequential(layers).train()

    opt_cfg = train_cfg["optimizer"]
    graph = args.worker == "graph"
    sched_cfg = train_cfg.get("schedule") or {"type": "constant"}
    kind = opt_cfg["type"]
    base_lr = float(opt_cfg["lr"])
    # Graph mode: the lr lives in a device tensor the captured step reads. Momentum and beta1 stay
    # floats: PyTorch's optimizers read a tensor beta on the host (`_foreach_pow(beta1, steps)` in
    # the capturable Adam), which a capture refuses ("operation failed due to a previous error
    # during capture", H200, PyTorch 2.11, 2026-12-05), so a schedule that cycles them cannot be
    # captured.
    cycles_momentum = sched_cfg.get("type") == "onecycle" and bool(sched_cfg.get("cycle_momentum", True))
    if graph and cycles_momentum:
        raise SystemExit(f"{args.resolved}: graph mode cannot cycle the optimizer's momentum (schedule.cycle_momentum): "
                         "PyTorch reads it on the host, which a captured step cannot")
    lr_t = torch.tensor(base_lr, device=device) if graph else base_lr
    beta1, beta2 = float(opt_cfg.get("beta1", 0.9)), float(opt_cfg.get("beta2", 0.999))
    betas = (beta1, beta2)
    params = model.parameters()
    wd = float(opt_cfg.get("weight_decay", 0.0))
    if kind == "sgd":
        # fused: the foreach SGD multiplies by the lr on the host, the fused one reads the tensor.
        opt = torch.optim.SGD(params, lr=lr_t, momentum=float(opt_cfg.get("momentum", 0.0)),
                              dampening=float(opt_cfg.get("dampening", 0.0)), nesterov=bool(opt_cfg.get("nesterov")),
                              weight_decay=wd, fused=True if graph else None)
    elif kind in ("adam", "adamw"):
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lr_t, betas=betas, eps=float(opt_cfg.get("eps", 1e-8)), weight_decay=wd,
                  capturable=graph)
    elif kind == "adadelta":
        opt = torch.optim.Adadelta(params, lr=lr_t, rho=float(opt_cfg.get("rho", 0.9)),
                                   eps=float(opt_cfg.get("eps", 1e-6)), weight_decay=wd, capturable=graph)
    else:
        raise SystemExit(f"{args.resolved}: optimizer '{kind}' has no PyTorch equivalent here")

    batch, n = int(train_cfg["batch_size"]), x_train.shape[0]
    steps_per_epoch = (n + batch - 1) // batch
    epochs = int(train_cfg["epochs"])
    total = steps_per_epoch * epochs
    if train_cfg.get("max_steps"):
        total = min(total, int(train_cfg["max_steps"]))

    # The schedule, as PyTorch's own schedulers compute it, on a shadow optimizer of float values
    # (graph mode copies them into the device tensors the captured step reads).
    shadow = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr, momentum=beta1)
    if kind in ("adam", "adamw"):
        shadow = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=base_lr, betas=(beta1, 0.999))
    stype = sched_cfg.get("type", "constant")
    per_epoch = False
    if stype == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            shadow, max_lr=float(sched_cfg["max_lr"]), total_steps=total, pct_start=float(sched_cfg.get("pct_start", 0.3)),
            anneal_strategy=sched_cfg.get("anneal", "cos"), cycle_momentum=bool(sched_cfg.get("cycle_momentum", True)),
            base_momentum=float(sched_cfg.get("base_momentum", 0.85)), max_momentum=float(sched_cfg.get("max_momentum", 0.95)),
            div_factor=float(sched_cfg.get("div_factor", 25.0)), final_div_factor=float(sched_cfg.get("final_div_factor", 1e4)))
    elif stype == "step":
        sched = torch.optim.lr_scheduler.StepLR(shadow, step_size=int(sched_cfg.get("step_size", 1)),
                                                gamma=float(sched_cfg.get("gamma", 0.1)))
        per_epoch = True
    elif stype == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(shadow, T_max=total, eta_min=float(sched_cfg.get("min_lr", 0.0)))
    elif stype == "linear":
        sched = torch.optim.lr_scheduler.LinearLR(
            shadow, start_factor=float(sched_cfg.get("start_factor", 1.0)), end_factor=float(sched_cfg.get("end_factor", 0.0)),
            total_iters=int(sched_cfg.get("total_iters") or total))
    else:
        sched = None
    warmup = int(sched_cfg.get("warmup_steps", 0) or 0)

    def set_hyper(step):
        group = shadow.param_groups[0]
        lr = group["lr"] * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
        b1 = group["betas"][0] if "betas" in group else group.get("momentum", beta1)
        for g in opt.param_groups:
            if graph:
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr
                if kind in ("adam", "adamw"):
                    g["betas"] = (b1, g["betas"][1])
                elif kind == "sgd" and cycles_momentum:
                    g["momentum"] = b1

    smoothing = float(train_cfg.get("label_smoothing", 0.0) or 0.0)
    augment = data_cfg.get("augment") or {}
    fill_n = (float(augment.get("fill", 0.0)) / 255.0 - mean) / std if augment else 0.0

    def augmented(x):
        if not augment:
            return x
        b = x.shape[0]
        u = lambda lo, hi: torch.rand(b, device=device) * (hi - lo) + lo  # noqa: E731
        rot = torch.deg2rad(u(-1, 1) * float(augment.get("rotation", 0.0)))
        shear = torch.deg2rad(u(-1, 1) * float(augment.get("shear", 0.0)))
        scale = 1 + u(-1, 1) * float(augment.get("scale", 0.0))
        tx = u(-1, 1) * float(augment.get("translation", 0.0)) * 2 / w
        ty = u(-1, 1) * float(augment.get("translation", 0.0)) * 2 / h
        # affine_grid maps output to input coordinates: the inverse of rotate * shear * scale.
        cos, sin = torch.cos(rot), torch.sin(rot)
        a = torch.stack([torch.stack([cos, -sin + cos * torch.tan(shear)], 1),
                         torch.stack([sin, cos + sin * torch.tan(shear)], 1)], 1) * scale[:, None, None]
        # The 2x2 inverse written out: torch.linalg.inv checks for singular matrices with a host
        # sync, which a captured step cannot do.
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        inv = torch.stack([torch.stack([a[:, 1, 1], -a[:, 0, 1]], 1),
                           torch.stack([-a[:, 1, 0], a[:, 0, 0]], 1)], 1) / det[:, None, None]
        offset = -(inv @ torch.stack([tx, ty], 1)[:, :, None])
        grid = F.affine_grid(torch.cat([inv, offset], 2), list(x.shape), align_corners=False)
        x = F.grid_sample(x - fill_n, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill_n
        p = float(augment.get("erasing", 0.0))
        if p > 0:
            area = u(0.02, 0.33) * h * w
            ratio = torch.exp(u(math.log(0.3), math.log(3.3)))
            eh = torch.sqrt(area * ratio).round().clamp(1, h)
            ew = torch.sqrt(area / ratio).round().clamp(1, w)
            top = (torch.rand(b, device=device) * (h - eh + 1)).floor()
            left = (torch.rand(b, device=device) * (w - ew + 1)).floor()
            rows = torch.arange(h, device=device)[None, :, None]
            cols = torch.arange(w, device=device)[None, None, :]
            box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None]) &
                   (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) &
                   (torch.rand(b, device=device) < p)[:, None, None])
            x = torch.where(box[:, None], torch.full_like(x, fill_n), x)
        return x

    def body(idx):
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(augmented(x_train[idx])), y_train[idx], label_smoothing=smoothing)
        loss.backward()
        opt.step()

    graphs = {}
    if graph:
        sizes = sorted({batch, n - (steps_per_epoch - 1) * batch})
        saved = [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]
        idx_by_size = {s: torch.arange(s, device=device) for s in sizes}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for s in sizes:
                for _ in range(3):
                    body(idx_by_size[s])
        torch.cuda.current_stream().wait_stream(side)
        for s in sizes:
            graphs[s] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graphs[s]):
                body(idx_by_size[s])
        with torch.no_grad():  # back to the initial weights and a fresh optimizer, in place
            for t, v in zip(list(model.parameters()) + list(model.buffers()), saved):
                t.copy_(v)
            for state in opt.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    eval_batch = int(train_cfg.get("eval_batch_size", 1000))
    eval_every = int(train_cfg.get("eval_every", 1) or 0)

    def evaluate():
        model.eval()
        correct = torch.zeros((), device=device, dtype=torch.int64)
        with torch.no_grad():
            for i in range(0, x_test.shape[0], eval_batch):
                correct += (model(x_test[i:i + eval_batch]).argmax(1) == y_test[i:i + eval_batch]).sum()
        model.train()
        return correct.item() / x_test.shape[0]

    step, accuracy = 0, None
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    for epoch in range(epochs):
        perm = torch.randperm(n, device=device, generator=gen)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            set_hyper(step)
            idx = perm[i * batch:(i + 1) * batch]
            if graph:
                idx_by_size[idx.shape[0]].copy_(idx)
                graphs[idx.shape[0]].replay()
            else:
                body(idx)
            step += 1
            if sched is not None and not per_epoch:
                sched.step()
        if sched is not None and per_epoch:
            sched.step()
        last = epoch == epochs - 1 or step >= total
        if last or (eval_every and (epoch + 1) % eval_every == 0):
            accuracy = evaluate()
        if step >= total:
            break
    torch.cuda.synchronize()
    out = {"accuracy": accuracy, "train_eval_s": time.perf_counter() - t0, "steps": step,
           "torch": torch.__version__}
    if notes:
        out["notes"] = notes
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------------

def summarise(results):
    groups = {}
    for r in results:
        groups.setdefault((r["side"], r["mode"]), []).append(r)
    out = []
    for (side, mode), runs in groups.items():
        ok = [r for r in runs if "error" not in r and r.get("accuracy") is not None]
        row = {"summary": True, "side": side, "mode": mode, "runs": len(runs), "failed": len(runs) - len(ok)}
        if ok:
            acc = [r["accuracy"] for r in ok]
            row.update(accuracy_mean=statistics.mean(acc), accuracy_min=min(acc), accuracy_max=max(acc),
                       wall_s_mean=statistics.mean(r["wall_s"] for r in ok))
            times = [r["train_eval_s"] for r in ok if r.get("train_eval_s") is not None]
            if times:
                row.update(train_eval_s_mean=statistics.mean(times), train_eval_s_min=min(times))
        out.append(row)
    base = next((r for r in out if r["side"] == "dptrain" and "train_eval_s_mean" in r), None)
    for row in out:
        if base and row is not base and "train_eval_s_mean" in row:
            row["dptrain_speedup_train_eval"] = row["train_eval_s_mean"] / base["train_eval_s_mean"]
            row["dptrain_speedup_wall"] = row["wall_s_mean"] / base["wall_s_mean"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/mnist_fast.yaml")
    p.add_argument("--seeds", type=int, default=10, help="seeds 1..K")
    p.add_argument("--dptrain", default="build/dptrain")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--pytorch", nargs="+", default=["eager", "graph"], choices=["eager", "graph", "none"])
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--out", default="runs/time_to_accuracy")
    p.add_argument("--set", action="append", help="a config override for both sides (key=value)")
    p.add_argument("--worker", choices=["eager", "graph"], help=argparse.SUPPRESS)
    p.add_argument("--resolved", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    os.makedirs(args.out, exist_ok=True)
    results = []
    for seed in range(1, args.seeds + 1):
        r = run_dptrain(args, seed)
        results.append(r)
        print(json.dumps(r), flush=True)
    resolved = os.path.join(results[0]["out"], "config.yaml")
    if "none" not in args.pytorch and os.path.exists(resolved):
        for mode in args.pytorch:
            for seed in range(1, args.seeds + 1):
                r = run_pytorch(args, seed, mode, resolved)
                results.append(r)
                print(json.dumps(r), flush=True)
    rows = summarise(results)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"\n{'side':8} {'mode':6} {'runs':>4} {'acc mean':>9} {'min':>7} {'max':>7} {'train+eval s':>12} {'wall s':>7}")
    for row in rows:
        if "accuracy_mean" not in row:
            print(f"{row['side']:8} {row['mode']:6} {row['runs']:4d}  all failed")
            continue
        te = row.get("train_eval_s_mean")
        print(f"{row['side']:8} {row['mode']:6} {row['runs']:4d} {100 * row['accuracy_mean']:8.2f}% "
              f"{100 * row['accuracy_min']:6.2f}% {100 * row['accuracy_max']:6.2f}% "
              f"{te if te is not None else float('nan'):12.3f} {row['wall_s_mean']:7.2f}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
