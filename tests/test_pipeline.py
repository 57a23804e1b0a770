"""The engine: graph validation, conditions, error isolation, trace, model pool, pipeline files."""

import json
import subprocess
import sys
import textwrap

import pytest

from vlpipe.pipeline import (SKIPPED, Executor, FunctionNode, Graph, GraphError, ModelPool, Node,
                             Pipeline, PipelineSpec, registry)


def fn_node(name, fn, inputs, outputs, **kw):
    return FunctionNode(name, fn, inputs=inputs, outputs=outputs, **kw)


def add_one():
    return fn_node("inc", lambda x: {"y": x + 1}, {"x": "number"}, {"y": "number"})


def test_engine_import_does_not_import_torch():
    code = "import sys, vlpipe.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_linear_graph_runs_in_topological_order():
    g = Graph({"x": "number"})
    # added out of order: the plan must still put inc before double
    g.add(fn_node("double", lambda y: {"z": 2 * y}, {"y": "number"}, {"z": "number"}), y="inc.y")
    g.add(add_one(), x="input.x")
    g.output("z", "double.z")
    assert g.plan() == ["inc", "double"]
    assert Executor(g).run(x=3).outputs == {"z": 8}


def test_validation_lists_every_problem_naming_node_and_port():
    g = Graph({"x": "number"})
    g.add(fn_node("a", lambda x, w: {}, {"x": "number", "w": "number"}, {"y": "number"}),
          x="input.x")                                             # w left unbound
    g.add(fn_node("b", lambda t: {}, {"t": "text"}, {"u": "text"}), t="a.y")  # number -> text
    g.add(fn_node("c", lambda v: {}, {"v": "any"}, {"o": "any"}), v="a.nope")  # unknown port
    g.add(fn_node("d", lambda v: {}, {"v": "any"}, {"o": "any"}), v="ghost.o")  # unknown node
    g.output("r", "b.u")
    with pytest.raises(GraphError) as err:
        g.validate()
    problems = err.value.problems
    assert "node 'a' input 'w': required input is not bound" in problems
    assert any(p.startswith("node 'b' input 't': type 'text' cannot take 'a.y'") for p in problems)
    assert "node 'c' input 'v': node 'a' has no output 'nope'" in problems
    assert "node 'd' input 'v': unknown node 'ghost' in 'ghost.o'" in problems
    assert len(problems) == 4


def test_cycle_is_reported():
    g = Graph({"x": "number"})
    g.add(fn_node("a", lambda x: {"y": x}, {"x": "number"}, {"y": "number"}), x="b.y")
    g.add(fn_node("b", lambda x: {"y": x}, {"x": "number"}, {"y": "number"}), x="a.y")
    with pytest.raises(GraphError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        g.plan()


def test_binding_an_input_twice_is_an_error():
    g = Graph({"x": "number"})
    g.add(add_one(), x="input.x")
    with pytest.raises(GraphError, match="bound twice"):
        g.connect("input.x", "inc.x")


def test_conditional_node_is_skipped_and_downstream_optional_gets_none():
    g = Graph({"x": "number"})
    g.add(fn_node("gate", lambda x: {"go": x > 0}, {"x": "number"}, {"go": "bool"}), x="input.x")
    calls = []

    def expensive(x):
        calls.append(x)
        return {"y": x * 10}

    g.add(fn_node("tool", expensive, {"x": "number"}, {"y": "number"}), when="gate.go", x="input.x")
    g.add(fn_node("needs", lambda y: {"r": y}, {"y": "number"}, {"r": "number"}), y="tool.y")
    g.add(fn_node("final", lambda x, y: {"r": (x, y)}, {"x": "number", "y": "number"},
                  {"r": "any"}, optional=frozenset({"y"})), x="input.x", y="tool.y")
    g.output("strict", "needs.r")
    g.output("final", "final.r")
    results = Executor(g).run_batch([{"x": 2}, {"x": -1}, {"x": 3}])
    assert calls == [2, 3]  # the tool ran only where the gate said so
    assert [r.outputs for r in results] == [
        {"strict": 20, "final": (2, 20)},
        {"strict": None, "final": (-1, None)},
        {"strict": 30, "final": (3, 30)},
    ]
    assert results[1].skipped == ["tool", "needs"]
    assert results[0].skipped == []


class Batched(Node):
    """Records the batch sizes it is called with; fails on negative inputs."""

    inputs = {"x": "number"}
    outputs = {"y": "number"}
    max_batch = 2

    def __init__(self, name, **params):
        super().__init__(name, **params)
        self.batch_sizes = []

    def run(self, batch):
        self.batch_sizes.append(len(batch))
        if any(item["x"] < 0 for item in batch):
            raise ValueError("negative input")
        return [{"y": item["x"] * 2} for item in batch]


def test_error_in_one_item_is_recorded_and_others_go_on():
    g = Graph({"x": "number"})
    node = g.add(Batched("twice"), x="input.x")
    g.add(fn_node("after", lambda y: {"z": y + 1}, {"y": "number"}, {"z": "number"}), y="twice.y")
    g.output("z", "after.z")
    ex = Executor(g)
    results = ex.run_batch([{"x": 1}, {"x": -5}, {"x": 2}])
    assert [r.outputs for r in results] == [{"z": 3}, {}, {"z": 5}]
    assert results[1].error == "node 'twice' failed: ValueError: negative input"
    assert results[1].error_node == "twice"
    # batches of 2: [1, -5] fails and is retried item by item; then [2]
    assert node.batch_sizes == [2, 1, 1, 1]
    failed = [e for e in ex.trace.events if e.failed]
    assert len(failed) == 2 and all(e.node == "twice" for e in failed)


def test_node_returning_wrong_shape_is_an_error_on_the_item():
    g = Graph({"x": "number"})
    g.add(fn_node("bad", lambda x: {"oops": 1}, {"x": "number"}, {"y": "number"}), x="input.x")
    g.output("y", "bad.y")
    result = Executor(g).run(x=1)
    assert "output ports missing from the result: ['y']" in result.error


def test_trace_records_each_call_and_exports_chrome_json(tmp_path):
    g = Graph({"x": "number"})
    g.add(Batched("twice"), x="input.x")
    g.output("y", "twice.y")
    ex = Executor(g)
    out = [r.outputs["y"] for r in ex.stream(({"x": i} for i in range(5)), batch_size=4)]
    assert out == [0, 2, 4, 6, 8]
    # stream batches of 4 then 1; the node splits 4 into 2 + 2
    assert [e.items for e in ex.trace.events] == [2, 2, 1]
    summary = ex.trace.summary()["twice"]
    assert summary["calls"] == 3 and summary["items"] == 5 and summary["rss_mb"] > 0
    ex.trace.save_chrome(tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert [e["name"] for e in events] == ["twice"] * 3
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    assert events[0]["ts"] == 0


class Loads(Node):
    inputs = {"x": "number"}
    outputs = {"y": "number"}

    def __init__(self, name, *, weights: str, **kw):
        super().__init__(name, **kw)
        self.weights = weights

    def run(self, batch):
        model = self.pool.get("adder", self.weights, self.device, None,
                              lambda: {"offset": len(self.weights)})
        return [{"y": item["x"] + model["offset"]} for item in batch]


def test_model_pool_shares_one_model_between_two_nodes():
    loads = []
    pool = ModelPool()
    for name in ("a", "b", "a"):
        pool.get("k", "w", "cpu", None, lambda: loads.append(1) or object())
    assert len(loads) == 1 and pool.loads == 1 and pool.hits == 2
    g = Graph({"x": "number"})
    g.add(Loads("n1", weights="abc"), x="input.x")
    g.add(Loads("n2", weights="abc"), x="n1.y")
    g.output("y", "n2.y")
    pool2 = ModelPool()
    assert Executor(g, pool2).run(x=1).outputs == {"y": 7}
    assert pool2.loads == 1 and pool2.hits == 1 and len(pool2.keys()) == 1


def test_model_pool_evicts_least_recently_used_under_budget():
    torch = pytest.importorskip("torch")
    pool = ModelPool(budget_bytes=2 * 400 + 10)  # room for two 100-float32 modules
    make = lambda: torch.nn.Linear(10, 10, bias=False)  # 100 params * 4 bytes = 400 B
    a = pool.get("lin", "a", "cpu", "float32", make)
    pool.get("lin", "b", "cpu", "float32", make)
    assert pool.get("lin", "a", "cpu", "float32", make) is a  # a is now most recently used
    pool.get("lin", "c", "cpu", "float32", make)  # evicts b
    assert [k.weights for k in pool.keys()] == ["a", "c"]
    assert pool.evictions == 1 and pool.nbytes == 800


PIPE = textwrap.dedent("""
    name: toy
    params: {factor: 3, label: "x"}
    inputs: {x: number}
    nodes:
      scale: {type: toy_scale, in: {x: input.x}, params: {factor: "${factor}", tag: "k=${label}"}}
    outputs: {y: scale.y}
""")


class Scale(Node):
    inputs = {"x": "number"}
    outputs = {"y": "number"}

    def __init__(self, name, factor, tag, **kw):
        super().__init__(name, **kw)
        self.factor, self.tag = factor, tag

    def run(self, batch):
        return [{"y": item["x"] * self.factor} for item in batch]


def test_pipeline_file_builds_the_same_graph_as_python(tmp_path):
    registry.register("toy_scale", Scale)
    path = tmp_path / "toy.yaml"
    path.write_text(PIPE)
    pipe = Pipeline.load(path, factor=5)
    node = pipe.graph.nodes["scale"]
    assert node.factor == 5 and node.tag == "k=x"  # typed whole-value and interpolated string
    assert pipe.run(x=2).outputs == {"y": 10}
    g = Graph({"x": "number"})
    g.add(Scale("scale", factor=5, tag="k=x"), x="input.x")
    g.output("y", "scale.y")
    assert Pipeline(g).to_mermaid() == pipe.to_mermaid()
    # the same file as JSON
    import yaml
    jpath = tmp_path / "toy.json"
    jpath.write_text(json.dumps(yaml.safe_load(PIPE)))
    assert Pipeline.load(jpath).run(x=2).outputs == {"y": 6}


def test_pipeline_file_errors_name_file_node_and_problem(tmp_path):
    registry.register("toy_scale", Scale)
    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPE.replace("toy_scale", "os.system").replace("${label}", "${nope}"))
    with pytest.raises(GraphError) as err:
        PipelineSpec.load(bad).build()
    text = str(err.value)
    assert "node 'scale': unknown variable ${nope}" in text
    assert "node 'scale': unknown node type 'os.system'" in text
    bad.write_text("inputs: {x: number}\nnodes: {a: {tpye: x}}\noutputs: {}\n")
    with pytest.raises(GraphError, match=r"bad.yaml: nodes.a.type: Field required"):
        PipelineSpec.load(bad)
    bad.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(GraphError, match="not valid YAML"):
        PipelineSpec.load(bad)
    with pytest.raises(GraphError, match="has no param 'zzz'"):
        Pipeline.load(_write(tmp_path, PIPE), zzz=1)
    with pytest.raises(GraphError, match="no built-in recipe"):
        Pipeline.load(tmp_path / "missing.yaml")


def _write(tmp_path, text):
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    return path


def test_third_party_node_type_from_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "my_nodes.py").write_text(textwrap.dedent("""
        from vlpipe.pipeline import Node
        class Negate(Node):
            inputs = {"x": "number"}
            outputs = {"y": "number"}
            def run(self, batch):
                return [{"y": -item["x"]} for item in batch]
    """))
    dist = pkg / "my_nodes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nodes\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vlpipe.nodes]\nnegate = my_nodes:Negate\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    spec = PipelineSpec.model_validate({
        "inputs": {"x": "number"}, "nodes": {"n": {"type": "negate", "in": {"x": "input.x"}}},
        "outputs": {"y": "n.y"}})
    assert Pipeline(spec.build()).run(x=4).outputs == {"y": -4}


def test_when_runs_on_truthy_values_skips_falsy_ones_and_rejects_arrays():
    import numpy as np
    import supervision as sv

    conditions = [True, 1, "yes", [0], np.True_,  # truthy: the node runs
                  False, None, 0, "", [], np.False_, sv.Detections.empty(),  # falsy: skipped
                  np.array([1, 2])]  # no truth value: the item's error
    g = Graph({"x": "number"})
    g.add(fn_node("gate", lambda x: {"go": conditions[x]}, {"x": "number"}, {"go": "any"}),
          x="input.x")
    g.add(add_one(), when="gate.go", x="input.x")
    g.output("y", "inc.y")
    results = Executor(g).run_batch([{"x": k} for k in range(len(conditions))])
    assert [r.outputs.get("y") for r in results[:5]] == [1, 2, 3, 4, 5]
    assert all(r.outputs == {"y": None} and r.skipped == ["inc"] for r in results[5:12])
    bad = results[12]
    assert bad.error_node == "inc" and "condition 'when: gate.go' has no truth value" in bad.error


def test_skipped_sentinel_never_leaks_into_results():
    g = Graph({"x": "number"})
    g.add(fn_node("gate", lambda x: {"go": False}, {"x": "number"}, {"go": "bool"}), x="input.x")
    g.add(add_one(), when="gate.go", x="input.x")
    g.output("y", "inc.y")
    result = Executor(g).run(x=1)
    assert result.outputs == {"y": None} and SKIPPED not in result.outputs.values()


SHARED = textwrap.dedent("""
    name: shared
    params: {factor: 3}
    inputs: {x: number}
    models:
      scaler: {factor: "${factor}"}
    nodes:
      a: {type: toy_scale, uses: scaler, in: {x: input.x}, params: {tag: "a"}}
      b: {type: toy_scale, uses: scaler, in: {x: a.y}, params: {tag: "b"}}
    outputs: {y: b.y}
""")


def test_a_model_declared_once_gives_its_params_to_every_node_that_uses_it(tmp_path):
    registry.register("toy_scale", Scale)
    path = tmp_path / "shared.yaml"
    path.write_text(SHARED)
    pipe = Pipeline.load(path, factor=5)
    a, b = pipe.graph.nodes["a"], pipe.graph.nodes["b"]
    assert (a.factor, a.tag, b.factor, b.tag) == (5, "a", 5, "b")
    assert pipe.run(x=2).outputs == {"y": 50}  # 2 * 5 * 5


def test_an_unknown_model_or_a_model_param_set_again_is_refused(tmp_path):
    registry.register("toy_scale", Scale)
    path = tmp_path / "typo.yaml"
    path.write_text(SHARED.replace("uses: scaler, in: {x: a.y}", "uses: scalar, in: {x: a.y}"))
    with pytest.raises(GraphError, match=r"node 'b': unknown model 'scalar' \(models: scaler\)"):
        Pipeline.load(path)
    path.write_text(SHARED.replace('params: {tag: "a"}', 'params: {tag: "a", factor: 4}'))
    with pytest.raises(GraphError, match="node 'a': factor set both here and by its model "
                                         "'scaler'; declare it once"):
        Pipeline.load(path)


def test_the_mllm_nodes_of_each_recipe_share_one_declared_model():
    from vlpipe.pipeline import resolve_pipeline

    for recipe, nodes in {"ask": ["decide", "phrases", "answer"], "detect": ["objects", "maps"],
                          "detect-fused": ["objects", "maps"]}.items():
        spec = PipelineSpec.load(resolve_pipeline(recipe))
        assert {spec.nodes[n].uses for n in nodes} == {"mllm"}, recipe
        assert all("model" not in spec.nodes[n].params for n in nodes), recipe


def test_misspelt_node_params_are_reported_together_before_any_model_loads(tmp_path):
    from vlpipe.agents.sam.nodes import SamNode
    from vlpipe.agents.tiles.node import TilesNode
    from vlpipe.pipeline import resolve_pipeline
    from vlpipe.pipeline.node import known_params

    spec = PipelineSpec.load(resolve_pipeline("detect"))
    spec.nodes["views"].params["tilez"] = "3x3"
    spec.nodes["merge"].params["treshold"] = 0.3
    spec.nodes["sam"].params["nonsense"] = 1
    with pytest.raises(GraphError) as err:
        spec.build(device="cpu")
    assert err.value.problems == [
        "node 'views' (tiles): bad params: unknown param 'tilez' "
        "(known: device, min_size, overlap, tiles)",
        f"node 'sam' (sam): bad params: unknown param 'nonsense' (known: "
        f"{', '.join(known_params(SamNode))})",
        "node 'merge' (merge): bad params: unknown param 'treshold' (known: class_agnostic, "
        "device, drop_fragments, fragment_containment, method, metric, threshold)",
    ]
    assert "max_instances" in known_params(SamNode) and "model" in known_params(SamNode)
    # in Python too, with the same words
    with pytest.raises(TypeError, match=r"unknown params 'a', 'b' \(known: device, min_size"):
        TilesNode("t", a=1, b=2)


def image_probe() -> Pipeline:
    """A pipeline that reports what its node received as the image: dtype, shape, mean."""
    g = Graph({"image": "image"})
    g.add(fn_node("look", lambda image: {"seen": (str(image.dtype), image.shape,
                                                   round(float(image.mean()), 3))},
                  {"image": "image"}, {"seen": "any"}), image="input.image")
    g.output("seen", "look.seen")
    return Pipeline(g)


def test_image_inputs_of_every_dtype_reach_nodes_as_uint8_rgb():
    import numpy as np

    pipe = image_probe()
    gray = np.full((4, 6), 0.5, np.float32)
    same = ("uint8", (4, 6, 3), 128.0)
    for image in (np.full((4, 6, 3), 128, np.uint8), np.full((4, 6, 3), 0.5, np.float32),
                  np.full((4, 6, 3), 128.0), np.full((4, 6, 3), 32896, np.uint16), gray,
                  np.full((4, 6, 1), 128, np.uint8), np.full((4, 6, 3), 128, np.int64)):
        assert pipe.run(image=image).outputs["seen"] == same, image.dtype
    # float 0..1 is not read as a black image; bool is 0 / 255; RGBA is composited on white
    assert pipe.run(image=np.ones((4, 6, 3), np.float32)).outputs["seen"][2] == 255.0
    assert pipe.run(image=np.zeros((4, 6, 3), bool)).outputs["seen"][2] == 0.0
    assert pipe.run(image=np.ones((4, 6), bool)).outputs["seen"][2] == 255.0
    clear = np.zeros((4, 6, 4), np.uint8)
    assert pipe.run(image=clear).outputs["seen"][2] == 255.0


def test_bad_image_inputs_are_the_item_error_and_the_others_go_on():
    import numpy as np

    pipe = image_probe()
    good = np.zeros((4, 6, 3), np.uint8)
    bad = {"shape": np.zeros((4, 6, 5), np.uint8), "range": np.full((4, 6, 3), 300.0),
           "nan": np.full((4, 6, 3), np.nan), "type": "dog.jpg", "empty": np.zeros((0, 6, 3))}
    results = pipe.run_batch([{"image": good}, *({"image": v} for v in bad.values())])
    assert results[0].error is None and results[0].outputs["seen"][0] == "uint8"
    for result, (what, _) in zip(results[1:], bad.items()):
        assert result.error and result.error.startswith("input 'image': "), what
        assert result.outputs == {}
    assert "(4, 6, 5)" in results[1].error and "[300, 300]" in results[2].error


def test_missing_and_unknown_inputs_are_a_type_error():
    import numpy as np

    pipe = image_probe()
    with pytest.raises(TypeError, match=r"missing input\(s\) 'image' \(the graph's inputs: image\)"):
        pipe.run()
    with pytest.raises(TypeError, match=r"unknown input\(s\) 'question'"):
        pipe.run(image=np.zeros((4, 6, 3), np.uint8), question="why?")
    with pytest.raises(TypeError, match=r"missing input\(s\) 'image'; unknown input\(s\) 'img'"):
        pipe.run(img=np.zeros((4, 6, 3), np.uint8))


def test_every_port_of_the_built_in_nodes_is_catalogued():
    """The port types of every built-in node type are in vlpipe.agents.ports, with their Python
    type (loading every node class imports their experts' code, not their weights)."""
    from vlpipe.agents.ports import PORT_TYPES
    from vlpipe.pipeline import registry

    built_in = [cls for cls in map(registry.get, registry.names())
                if cls.__module__.startswith("vlpipe.")]  # not the examples' or tests' nodes
    assert {"FuseNode", "LocatePointsNode", "TilesNode"} <= {cls.__name__ for cls in built_in}
    declared = {t for cls in built_in for t in [*cls.inputs.values(), *cls.outputs.values()]}
    assert declared == set(PORT_TYPES)


def test_largest_region_reaches_every_sam_node_of_the_detect_recipes():
    from vlpipe.pipeline import resolve_pipeline

    for recipe in ["detect", "detect-fused", "detect-branches"]:
        spec = PipelineSpec.load(resolve_pipeline(recipe))
        sams = [n for n, node in spec.nodes.items() if node.type in ("sam", "sam_boxes")]
        assert len(sams) == {"detect": 1, "detect-fused": 2, "detect-branches": 4}[recipe]
        for given, expected in [({}, False), ({"largest_region": True}, True)]:
            nodes = spec.build(device="cpu", **given).nodes
            assert [nodes[n].largest_region for n in sams] == [expected] * len(sams), recipe
