"""One-shot runs refuse bad requests before anything is made, and leave a refused VM alone.

Nothing here starts a VMM; the runs that do are in test_vms_integration.py.
"""

from __future__ import annotations

import pytest

from pyro_mcp.errors import InvalidArgumentError, WrongStateError
from pyro_mcp.sdk import Pyro


def test_run_and_exec_refuse_a_zero_timeout_before_creating_anything() -> None:
    pyro = Pyro()  # cache and state in this test's own directories
    with pytest.raises(InvalidArgumentError, match="timeout_seconds must be between 1 and"):
        pyro.run_in_vm(environment="debian:12", command="true", timeout_seconds=0)
    with pytest.raises(InvalidArgumentError, match="command is empty"):
        pyro.run_in_vm(environment="debian:12", command=" ")
    assert pyro.vms.store.list_vms() == []


def test_exec_on_a_vm_that_is_not_started_is_refused_and_keeps_the_vm() -> None:
    pyro = Pyro()
    vm_id = pyro.create_vm(environment="debian:12")["vm_id"]
    with pytest.raises(WrongStateError, match=f"VM {vm_id} is created") as caught:
        pyro.exec_vm(vm_id, command="true")
    assert caught.value.hint is not None and "start_vm" in caught.value.hint
    with pytest.raises(InvalidArgumentError, match="timeout_seconds"):
        pyro.exec_vm(vm_id, command="true", timeout_seconds=0)
    assert pyro.status_vm(vm_id)["state"] == "created"  # a refused request deletes nothing
