"""One sink instance per run: classes and factories make a fresh one for every run
and attempt; an instance that several runs would share is refused at submit."""

import pytest

import notebook_exp as nx
from notebook_exp.exceptions import SinkError
from notebook_exp.models import RunStatus
from notebook_exp.sinks import registry
from notebook_exp.testing import MemorySink


def log_i(run, i):
    run.log(x=float(i))


def assert_served_once(sink, run_id):
    """The sink saw one run, start_run first, end_run then close last, each once."""
    methods = sink.methods
    assert sink.run.run_id == run_id
    assert methods[0] == "start_run" and methods[-2:] == ["end_run", "close"]
    assert [methods.count(m) for m in ("start_run", "end_run", "close")] == [1, 1, 1]


def recording_factory():
    made = []

    def factory():
        made.append(MemorySink())
        return made[-1]

    return factory, made


def counted_class():
    made = []

    class CountedSink(MemorySink):
        def __init__(self):
            super().__init__()
            made.append(self)

    return CountedSink, made


@pytest.mark.parametrize("make", [counted_class, recording_factory], ids=["class", "factory"])
def test_each_run_of_a_sweep_gets_its_own_sink(make):
    entry, made = make()
    jobs = nx.sweep(log_i, {"i": [0, 1, 2]}, sinks=[entry])
    assert nx.wait(jobs, timeout=60) == [RunStatus.COMPLETED] * 3
    assert len(made) == 3 and len({id(sink) for sink in made}) == 3
    by_run = {sink.run.run_id: sink for sink in made}
    for job in jobs:
        sink = by_run[job.run_id]
        assert_served_once(sink, job.run_id)
        assert [point[3] for point in sink.points] == [float(job.params["i"])]
        assert sink.status == RunStatus.COMPLETED


def test_each_attempt_of_a_retried_run_gets_its_own_sink():
    factory, made = recording_factory()
    attempts = []

    def flaky(run):
        attempts.append(run)
        run.log(attempt=float(len(attempts)))
        if len(attempts) < 3:
            raise ConnectionError("try again")

    job = nx.submit(flaky, retries=2, retry_backoff=0.01, sinks=[factory])
    assert job.wait(60) == RunStatus.COMPLETED and job.attempts == 3
    assert len(made) == 3 and len({id(sink) for sink in made}) == 3
    for sink in made:
        assert_served_once(sink, job.run_id)
    assert [sink.status for sink in made] == [RunStatus.FAILED, RunStatus.FAILED, RunStatus.COMPLETED]
    assert [[p[3] for p in sink.points] for sink in made] == [[1.0], [2.0], [3.0]]


def test_start_run_takes_classes_and_factories():
    cls, made_by_class = counted_class()
    factory, made_by_factory = recording_factory()
    for _ in range(2):
        with nx.start_run(sinks=[cls, factory]) as run:
            run.log(x=1.0)
        assert_served_once(made_by_class[-1], run.run_id)
        assert_served_once(made_by_factory[-1], run.run_id)
    assert len(made_by_class) == len(made_by_factory) == 2
    assert made_by_class[0] is not made_by_class[1] and made_by_factory[0] is not made_by_factory[1]


def test_resolve_makes_new_sinks_from_classes_and_factories_but_keeps_instances():
    factory, _made = recording_factory()
    instance = MemorySink()
    first, second = (registry.resolve([MemorySink, factory, instance, "jsonl"]) for _ in range(2))
    assert [type(s).__name__ for s in first] == ["MemorySink", "MemorySink", "MemorySink", "JSONLSink"]
    assert all(a is not b for a, b in zip(first[:2] + first[3:], second[:2] + second[3:]))
    assert first[2] is instance and second[2] is instance


@pytest.mark.parametrize(
    "queue, shared_by",
    [
        (lambda sinks: nx.sweep(log_i, {"i": [0, 1]}, sinks=sinks), "the 2 runs of a sweep"),
        (lambda sinks: nx.submit(log_i, {"i": 0}, retries=1, sinks=sinks), "the 2 attempts of retries=1"),
    ],
    ids=["sweep", "retries"],
)
def test_a_shared_instance_is_refused_and_nothing_is_queued(queue, shared_by):
    sink = MemorySink()
    with pytest.raises(SinkError, match=f"shared by {shared_by}") as caught:
        queue(["duckdb", sink])
    assert "pass the class or a factory instead" in str(caught.value)
    assert "sinks=[MemorySink]" in str(caught.value)
    assert nx.runs().empty and sink.methods == []


def test_a_single_instance_in_a_single_run_still_works():
    sink = MemorySink()
    job = nx.submit(log_i, {"i": 7}, sinks=[sink])
    assert job.wait(30) == RunStatus.COMPLETED
    assert_served_once(sink, job.run_id)
    assert [point[3] for point in sink.points] == [7.0]
    one = nx.sweep(log_i, {"i": [8]}, sinks=[sink2 := MemorySink()])  # a sweep of one run shares nothing
    assert nx.wait(one, timeout=30) == [RunStatus.COMPLETED]
    assert_served_once(sink2, one[0].run_id)


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict, "not a subclass of notebook_exp.sinks.Sink"),
        (lambda path: MemorySink(), "called with no arguments"),
        (42, "a sink is a registered name or a Sink"),
    ],
    ids=["not-a-sink-class", "factory-with-arguments", "not-callable"],
)
def test_entries_that_cannot_make_a_sink_are_refused_at_submit(entry, message):
    with pytest.raises(SinkError, match=message):
        nx.submit(log_i, {"i": 0}, sinks=[entry])
    assert nx.runs().empty


def test_a_factory_that_returns_no_sink_fails_the_start_loudly():
    with pytest.raises(SinkError, match="returned None, not a notebook_exp.sinks.Sink"):
        nx.start_run(sinks=[lambda: None])


def test_a_process_run_builds_its_sink_from_a_class_in_the_child(store_path):
    def log_in_child(run, i):  # defined here: shipped by value, not by this module's name
        run.log(x=float(i))

    job = nx.submit(log_in_child, {"i": 5}, executor="process", sinks=["duckdb", MemorySink])
    assert job.wait(90) == RunStatus.COMPLETED
    assert list(nx.metrics(job.run_id, "x").value) == [5.0]
