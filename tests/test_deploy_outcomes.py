"""What `vgen deploy` reads from ansible-playbook: each vertical's outcome on its host.

The playbook runs on this machine (connection local) with the deploy's own result task,
after a task that sets what a host would have registered: vgen-activate's output, or a
vgen-activate left out because every release there was in service already.
"""

from __future__ import annotations

import sys

import yaml

from generator import activate, deploy, placement

FAILED = ('beta: FAILED: release cccccccccccc refused, release dddddddddddd serves again. The journal says:\n'
          '    Traceback: "quoted": {not json}')
ACTIVATED = {"stdout": f"alpha: release aaaaaaaaaaaa serving; previous release bbbbbbbbbbbb\n{FAILED}", "rc": 1}
LEFT_OUT = {"skipped": True, "changed": False}


def host(activated: dict, stale: list) -> dict:
    return {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "vgen_activated": activated, "vgen_found_here": {"stale": stale}}


def test_outcomes_are_read_whatever_ansible_is_set_to_print(tmp_path, monkeypatch):
    # Settings an admin may have that would hide or reshape what vgen reads.
    monkeypatch.setenv("ANSIBLE_STDOUT_CALLBACK", "minimal")
    monkeypatch.setenv("ANSIBLE_CALLBACK_RESULT_FORMAT", "yaml")
    monkeypatch.setenv("ANSIBLE_DISPLAY_OK_HOSTS", "false")
    inventory, playbook = tmp_path / "inventory.yml", tmp_path / "playbook.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "web1": host(ACTIVATED, ["alpha", "beta"]),
        "web2": host(LEFT_OUT, ["delta"]),
    }}}))
    playbook.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "What the host registered", "ansible.builtin.set_fact": {
            "activated": "{{ vgen_activated }}", "vgen_found": "{{ vgen_found_here }}"}},
        deploy.result_task(),
    ]}]))
    staged = [deploy.Staged(placement.Host(name, "127.0.0.1"), list(releases), tmp_path / "bundle", releases)
              for name, releases in (("web1", {"alpha": "aaaaaaaaaaaa", "beta": "cccccccccccc"}),
                                     ("web2", {"gamma": "eeeeeeeeeeee", "delta": "ffffffffffff"}),
                                     ("web3", {"omega": "999999999999"}))]

    status, outcomes, recap = deploy.run(staged, inventory, playbook)

    assert status == 0, recap
    assert {(o.host, o.slug): o.outcome for o in outcomes} == {
        ("web1", "alpha"): "release aaaaaaaaaaaa serving; previous release bbbbbbbbbbbb",
        ("web1", "beta"): FAILED.splitlines()[0].removeprefix("beta: "),
        # vgen-activate left out: what was in service is said so; what was not, was not reached.
        ("web2", "gamma"): activate.already_current("eeeeeeeeeeee"),
        ("web2", "delta"): "not reached",
        ("web3", "omega"): "not reached",  # not in the play at all
    }
    assert "PLAY RECAP" in recap
