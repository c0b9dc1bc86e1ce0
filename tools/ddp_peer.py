"""PyTorch's own distributed side, beside sorbier's c10d ranks.

  allreduce  one rank of a mixed group (`init_process_group("gloo")` from the usual RANK,
             WORLD_SIZE, MASTER_ADDR, MASTER_PORT): allreduces arange(5) * (rank + 1), then
             receives a broadcast from rank 0, and prints both results as JSON. The test
             `crates/train/tests/dist.rs` runs it against a sorbier rank.
  bench      PyTorch training throughput on random batches (torchvision's ResNet-18 or
             efficientnet-lite-pytorch's Lite0, Adam), alone or as DDP under torchrun, for
             tools/bench-dist.sh.
  allreduce-bandwidth
             median time and bus bandwidth of a 64 MiB allreduce, under torchrun.
"""
import argparse
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def allreduce(_args):
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    t = torch.arange(5, dtype=torch.float32) * (rank + 1)
    dist.all_reduce(t)
    b = torch.full((3,), float(rank), dtype=torch.float64)
    dist.broadcast(b, src=0)
    print(json.dumps({"rank": rank, "world": dist.get_world_size(), "allreduce": t.tolist(), "broadcast": b.tolist()}))
    dist.destroy_process_group()


def build(arch, classes):
    if arch == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=classes)
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=classes)


def bench(args):
    torch.set_num_threads(args.threads)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    world = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(0)
    model = build(args.arch, 5)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 5, (args.batch_size,), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if distributed:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if distributed:
        dist.barrier()
    secs = time.perf_counter() - start
    if rank == 0:
        rate = world * args.batch_size * args.steps / secs
        print(json.dumps({"impl": "pytorch-ddp" if distributed else "pytorch", "arch": args.arch, "size": args.size, "world": world, "threads": args.threads, "img_per_s": rate}))
    if distributed:
        dist.destroy_process_group()


def allreduce_bandwidth(args):
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    t = torch.ones(args.mib << 18)
    dist.all_reduce(t)
    times = []
    for _ in range(5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    secs = sorted(times)[2]
    bus = args.mib * 1048576 * 2 * (world - 1) / world / secs / 1e9
    if dist.get_rank() == 0:
        print(json.dumps({"impl": "pytorch", "allreduce_mib": args.mib, "world": world, "ms": round(secs * 1e3, 1), "bus_gb_per_s": round(bus, 2)}))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("allreduce")
    b = sub.add_parser("bench")
    b.add_argument("--arch", default="resnet18", choices=["resnet18", "efficientnet-lite0"])
    b.add_argument("--size", type=int, default=112)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--steps", type=int, default=8)
    bw = sub.add_parser("allreduce-bandwidth")
    bw.add_argument("--mib", type=int, default=64)
    args = p.parse_args()
    {"allreduce": allreduce, "bench": bench, "allreduce-bandwidth": allreduce_bandwidth}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
