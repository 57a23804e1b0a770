"""Executor overhead: a 50-node chain of tiny nodes through ``Executor.stream`` vs a plain loop.

    python bench/engine.py [--nodes 50] [--items 1000] [--batch-sizes 64 1] [--repeats 3]

Each node is a :class:`~vlpipe.pipeline.FunctionNode` doing ``y = x + 1``; node ``k`` reads node
``k-1``'s output. The baseline calls the same functions in a plain Python loop (item by item,
node by node). Overhead per node per item = (executor time - loop time) / (nodes x items): the
cost of gathering inputs, conditions, output checks and the trace (one ``getrusage`` per
``run`` call). Best of ``--repeats`` runs, a fresh executor each time.
"""

from __future__ import annotations

import argparse
import time

from vlpipe.pipeline import Executor, FunctionNode, Graph


def inc(x):
    return {"y": x + 1}


def build_chain(n: int) -> Graph:
    g = Graph({"x": "number"})
    source = "input.x"
    for k in range(n):
        g.add(FunctionNode(f"n{k}", inc, inputs={"x": "number"}, outputs={"y": "number"}),
              x=source)
        source = f"n{k}.y"
    g.output("y", source)
    return g


def plain_loop(fns, items) -> list:
    out = []
    for item in items:
        v = item["x"]
        for fn in fns:
            v = fn(x=v)["y"]
        out.append(v)
    return out


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    graph = build_chain(args.nodes)
    fns = [graph.nodes[name].fn for name in graph.plan()]
    items = [{"x": i} for i in range(args.items)]
    expected = [i + args.nodes for i in range(args.items)]

    loop_s, got = best_of(args.repeats, lambda: plain_loop(fns, items))
    assert got == expected
    work = args.nodes * args.items
    print(f"{args.nodes}-node chain, {args.items} items, best of {args.repeats}")
    print(f"{'run':22s} {'total s':>9s} {'us/node/item':>13s} {'overhead us':>12s} {'ratio':>7s}")
    print(f"{'plain loop':22s} {loop_s:9.4f} {loop_s / work * 1e6:13.2f} {'-':>12s} {1.0:7.1f}")
    for bs in args.batch_sizes:
        def run():
            return [r.outputs["y"] for r in Executor(graph).stream(items, batch_size=bs)]

        s, got = best_of(args.repeats, run)
        assert got == expected
        print(f"{f'executor, batch {bs}':22s} {s:9.4f} {s / work * 1e6:13.2f} "
              f"{(s - loop_s) / work * 1e6:12.2f} {s / loop_s:7.1f}")


if __name__ == "__main__":
    main()
