"""The bundled guests: `pykvm boot --help` lists them, and a Linux guest says where it can boot.

Which KVM backs /dev/kvm is read from /sys/module; these tests set the answer
(kvm_backend) to check both sides on any machine.  tests/kvm/test_cli_boot.py
checks the real answer on this machine end to end.
"""
from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from pykvm.vm import guests
from pykvm.errors import ConfigError
from pykvm.vm.kvm import system


def test_boot_help_lists_every_bundled_guest():
    from pykvm.commands.boot import boot

    result = CliRunner().invoke(boot, ["--help"])
    assert result.exit_code == 0, result.output
    listing = result.output.split("Bundled guests (GUEST):", 1)[1]
    for name, guest in guests.GUESTS.items():
        assert f"  {name} " in listing, listing
        assert f"`{guest.build}`" in listing, listing
    assert "hardware KVM only" in listing and "the default" in listing, listing


def test_linux_on_pvm_says_where_it_can_boot(monkeypatch):
    monkeypatch.setattr(system, "kvm_backend", lambda: "PVM, software")
    with pytest.raises(ConfigError) as info:
        guests.find_guest("linux")
    message = str(info.value)
    assert message == f"guest 'linux': {guests.LINUX_ON_PVM}"
    assert "cannot finish booting on this /dev/kvm" in message and "make test-hw" in message
    assert "make linux-guest" not in message, message


def test_linux_on_hardware_kvm_names_its_build_when_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(system, "kvm_backend", lambda: "AMD SVM, hardware")
    missing = dataclasses.replace(guests.GUESTS["linux"], kernel=tmp_path / "vmlinuz")
    monkeypatch.setitem(guests.GUESTS, "linux", missing)
    with pytest.raises(ConfigError, match="is not built .* run `make linux-guest`"):
        guests.find_guest("linux")


def test_tiny_guest_does_not_ask_about_the_backend(monkeypatch):
    monkeypatch.setattr(system, "kvm_backend", lambda: "PVM, software")
    tiny = guests.GUESTS["tiny"]
    if not tiny.kernel.exists():
        pytest.skip(f"{tiny.kernel} is not built (make guests)")
    assert guests.find_guest("tiny") is tiny


def test_compare_plot_says_where_it_wrote(monkeypatch, tmp_path):
    """The measuring needs KVM and root (tests/kvm/test_compare.py); here it is replaced, to
    check what the command says once the plot is written."""
    from pykvm.commands.compare import compare
    from pykvm.comparison import plot, report

    monkeypatch.setattr(report, "compare", lambda *args, **kwargs: {"runs": 1})
    monkeypatch.setattr(plot, "write_plot", lambda data, path: open(path, "w").close())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(compare, ["--json", "--runs", "1", "--plot", "p.svg"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.svg").exists()
    # stderr: click 8.1 mixes it into output, 8.2 too (and keeps it apart in result.stderr)
    assert f"pykvm compare: plot written to {tmp_path / 'p.svg'}\n" in result.output, result.output
