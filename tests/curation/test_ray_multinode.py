"""``curate.executor: ray`` against a cluster of two Ray nodes (two raylets with their own object
stores, on this machine: ``ray.cluster_utils.Cluster``), joined through ``RAY_ADDRESS`` as a real
cluster is. The head node, where the stage process runs, has no CPUs, so every shard check and
every dedup group-by runs on the other node: the project's code reaches it as ``py_modules``, the
driver's sketches and the broadcast benchmark index cross between object stores, and the outputs
are still the local executor's. Teacher generation's Ray replicas (the fake engine) likewise run
on the other node and give the local engine's samples in prompt order."""
from __future__ import annotations

import os

import pytest

from curation.sharded import curate_source
from generation.engines import SamplingConfig
from generation.factory import make_engine
from tests.curation.sharded_helpers import benchmark_dir, champ_traces, curate_params, student_tokenizer
from tests.curation.test_ray_executor import assert_same

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved


@pytest.mark.slow
def test_curation_on_a_two_node_cluster_gives_the_local_outputs(two_nodes, tmp_path, capsys):
    tokenizer = student_tokenizer()
    path, bench = champ_traces(tmp_path / "traces.parquet", 600), benchmark_dir(tmp_path)
    cur = curate_params(shard_rows=200)
    local = curate_source(path, cur, tokenizer, bench, tmp_path / "local", executor="local")
    on_ray = curate_source(path, cur, tokenizer, bench, tmp_path / "ray", executor="ray")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert sorted(n["Resources"].get("CPU", 0) for n in nodes) == [0, 2]     # the head runs nothing
    assert_same(local, on_ray)
    err = capsys.readouterr().err
    assert "curate on Ray (2 actors): 600/600 rows in " in err and "curate dedup on Ray: " in err


def _node(user: str, index: int) -> str:
    import ray

    return f"{user}#{index}@{ray.get_runtime_context().get_node_id()}"


@pytest.mark.slow
def test_generation_replicas_run_on_the_other_node_in_prompt_order(two_nodes):
    import ray

    engine = make_engine({"kind": "fake", "respond": _node, "ray": {"replicas": 2}})
    try:
        prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(9)]
        got = [s[0].text for s in engine.generate(prompts, SamplingConfig(max_tokens=4))]
    finally:
        engine.close()
    head = ray.get_runtime_context().get_node_id()
    texts, nodes = zip(*(t.split("@") for t in got))
    assert list(texts) == [f"question {i}#0" for i in range(9)]
    assert head not in nodes and len(set(nodes)) == 1      # the one node with CPUs
