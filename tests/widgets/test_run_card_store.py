"""A run card says why its run's records are not in the store yet."""

import time

import pytest

import notebook_exp as nx
from notebook_exp.store import get_store
from notebook_exp.testing import StoreHolder
from notebook_exp.widgets.run_card import RunCard


@pytest.mark.filterwarnings("ignore:store .* is held by")
def test_the_card_says_waiting_for_the_store_while_another_process_holds_it(store_path):
    get_store(store_path).ensure()
    nx.testing.shutdown()
    with StoreHolder(store_path) as holder:
        job = nx.submit(lambda run: run.log(x=1.0))
        card = RunCard(job)
        deadline = time.monotonic() + 10
        while f"held by process {holder.pid}" not in card.header.value and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"waiting for the store (held by process {holder.pid})" in card.header.value
        assert not job.done  # its end is not stored while the file is held
    assert job.wait(30) == nx.RunStatus.COMPLETED
    time.sleep(0.3)  # the card's last redraw
    assert "waiting for the store" not in card.header.value and "completed" in card.header.value
