"""An error is either the user's mistake (one line, exit 2) or a bug (its traceback), never one dressed as the other."""
import pytest

from attnbench import cli
from attnbench.implementations import torch_sdpa
from attnbench.implementations.registry import UnknownBackendError


def test_a_bug_in_a_command_keeps_its_traceback(monkeypatch):
    # The CLI used to catch every KeyError as "user mistake, exit 2", an internal bug's included.
    def buggy(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "_cmd_backends", buggy)
    with pytest.raises(KeyError, match="missing"):
        cli.main(["backends"])


def test_an_unknown_backend_is_one_line_and_still_a_key_error(capsys):
    assert cli.main(["check", "nosuch", "--problem", "N=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnbench: error: unknown backend 'nosuch'") and len(err.strip().splitlines()) == 1
    assert issubclass(UnknownBackendError, KeyError)          # callers that caught get_backend's KeyError still do
    assert str(UnknownBackendError("plain")) == "plain"        # not KeyError's quoted repr


def test_a_kernel_torch_refuses_is_not_supported():
    # Torch's kernel selection refusing the call is the one "not supported": CPU has no efficient-attention kernel.
    assert not torch_sdpa._runs(torch_sdpa.KERNELS["efficient"], "cpu", "float32")
    assert torch_sdpa._runs(torch_sdpa.KERNELS["math"], "cpu", "float32")


@pytest.mark.parametrize("error", [TypeError("unexpected keyword 'enable_gqa'"), ValueError("bad scale"),
                                   RuntimeError("The size of tensor a (8) must match the size of tensor b (9)")])
def test_a_bug_in_a_probe_call_propagates_instead_of_becoming_a_skip(monkeypatch, error):
    # It used to read every TypeError/ValueError as "feature not supported": silent skips for a bug in our call.
    monkeypatch.setattr(torch_sdpa, "sdpa_call", _raising(error))
    with pytest.raises(type(error)):
        torch_sdpa._runs(torch_sdpa.KERNELS["math"], "cpu", "float32")


@pytest.mark.parametrize("error", [RuntimeError("No available kernel.  Aborting execution."),
                                   NotImplementedError("Could not run 'aten::_flash' with arguments from 'CPU'")])
def test_torchs_not_supported_errors_are_read_as_not_supported(monkeypatch, error):
    monkeypatch.setattr(torch_sdpa, "sdpa_call", _raising(error))
    assert torch_sdpa._runs(torch_sdpa.KERNELS["math"], "cpu", "float32") is False


def _raising(error):
    def call(*args, **kwargs):
        raise error

    return call
