"""``casemate cert DIR show|generate|rotate|request|install|reload``."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization

from .. import continuity, tls
from ..database import GENERATED_MARKER, write_private
from .main import fail, open_folder
from .pidfile import PID_FILE, running_pid


@click.group()
@click.argument("directory", type=click.Path(path_type=Path))
@click.pass_context
def cert(ctx: click.Context, directory: Path) -> None:
    """Show, generate, rotate, request, install or reload DIRECTORY's key and certificate.

    Usage: casemate cert DIRECTORY show|generate|rotate|request|install|reload
    """
    ctx.obj = directory


def _describe(info: tls.CertInfo) -> list[str]:
    return [
        f"Subject:        {info.subject}",
        f"Issuer:         {info.issuer}{'  (self-signed)' if info.self_signed else ''}",
        f"SANs:           {', '.join(info.sans) or '-'}",
        f"Valid:          {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d} "
        f"({info.days_left} days left)",
        f"Key:            {info.key_type}",
        f"SHA-256:        {info.sha256}",
        f"Key SHA-256:    {info.spki_sha256}  (what clients pin)",
    ]


@cert.command("show")
@click.pass_obj
def show(directory: Path) -> None:
    """Describe Resources/cert.pem and check it against key.pem."""
    folder = open_folder(directory)
    try:
        chain = tls.load_chain(folder.cert_path)
    except tls.CertificateError as e:
        fail(str(e))
        return
    for line in _describe(tls.inspect_cert(chain[0])):
        click.echo(line)
    if len(chain) > 1:
        click.echo(f"Chain:          {len(chain) - 1} more certificate(s)")
    try:
        _, warnings = tls.check_pair(folder.key_path, folder.cert_path)
    except tls.CertificateError as e:
        click.echo(f"PROBLEM:        {e}")
        raise SystemExit(1) from e
    for w in warnings:
        click.echo(f"Warning:        {w}")


@cert.command("generate")
@click.pass_obj
@click.option("--days", type=click.IntRange(1, 366), default=365, show_default=True,
              help="Validity in days (1 to 366, the most Mozilla's TLS profiles allow).")
@click.option("--san", multiple=True, help="Extra subject alternative name (repeatable), e.g. "
              "the LAN name or address clients verifying with tls_ca connect to.")
@click.option("--keep-key", is_flag=True, help="Reissue the certificate on the existing "
              "key.pem (keeping its names, adding --san): clients that pinned the key keep "
              "working.")
@click.option("--force", is_flag=True, help="Replace the existing key and certificate.")
def generate(directory: Path, days: int, san: tuple[str, ...], keep_key: bool,
             force: bool) -> None:
    """Generate a new key pair and self-signed certificate for this database.

    With --keep-key, only the certificate is new: same key, the names it had plus --san.
    """
    folder = open_folder(directory)
    settings = folder.settings()
    sans = tls.default_sans(settings.network.listen)
    if keep_key:
        key, old_sans = _kept_key(folder.key_path, folder.cert_path)
        sans += old_sans
    elif (folder.key_path.exists() or folder.cert_path.exists()) and not force:
        fail("Resources/key.pem or cert.pem exists; pass --keep-key to reissue the certificate "
             "on the same key (pinned clients keep working), or --force to replace both "
             "(clients that pinned the old key will refuse the new one until they run "
             "'casemate trust forget')")
        return
    else:
        key = tls.generate_key()
    try:
        c = tls.make_self_signed(key, settings.network.publication_name,
                                 list(dict.fromkeys(sans + list(san))), days)
    except ValueError as e:
        fail(str(e))
        return
    if weak := tls.weak_key(c):
        fail(f"--keep-key: {folder.key_path} is {weak[3:]}; generate without --keep-key")
    if keep_key:
        _replace_cert(folder.cert_path, c)
    else:
        _install_files(folder.key_path, folder.cert_path, key, c)
    write_private(folder.resources / GENERATED_MARKER, tls.spki_fingerprint(c) + "\n")
    click.echo("New self-signed certificate installed"
               + (" (same key: pinned clients keep working):" if keep_key else ":"))
    for line in _describe(tls.inspect_cert(c)):
        click.echo("  " + line)
    click.echo(f"Reload a running server with: casemate cert {directory} reload")


@cert.command("rotate")
@click.pass_obj
@click.option("--days", type=int, default=365, show_default=True, help="Validity (at most 366).")
@click.option("--san", multiple=True, help="Extra subject alternative name (repeatable).")
@click.option("--no-endorse", is_flag=True, help="Do not let the old key vouch for the new "
              "one (when the old key may have been stolen): pinned clients then refuse the "
              "new key until each user compares it and runs 'casemate trust forget'.")
def rotate(directory: Path, days: int, san: tuple[str, ...], no_endorse: bool) -> None:
    """Replace the key: a new key and self-signed certificate (same names, plus --san),
    endorsed by the old key for network.key_transition_days so that pinned clients move
    to it by themselves.  The old files are kept as key.pem.old and cert.pem.old."""
    folder = open_folder(directory)
    settings = folder.settings()
    old_key, old_sans = _kept_key(folder.key_path, folder.cert_path)
    key = tls.generate_key()
    sans = list(dict.fromkeys(tls.default_sans(settings.network.listen) + old_sans + list(san)))
    try:
        c = tls.make_self_signed(key, settings.network.publication_name, sans, days)
    except ValueError as e:
        fail(str(e))
        return
    if not no_endorse:
        _endorse(folder.resources / "successor.pem", old_key, c, settings)
    _install_files(folder.key_path, folder.cert_path, key, c)
    write_private(folder.resources / GENERATED_MARKER, tls.spki_fingerprint(c) + "\n")
    click.echo("New key and self-signed certificate installed:")
    for line in _describe(tls.inspect_cert(c)):
        click.echo("  " + line)
    click.echo(f"Reload a running server with: casemate cert {directory} reload")


def _endorse(path: Path, old_key: tls.PrivateKey, new: Any, settings: Any) -> None:
    """The old key vouches for ``new``'s key (continuity.py); say what pinned clients do."""
    days = settings.network.key_transition_days
    if continuity.endorse(path, old_key, new, days, settings.network.publication_name):
        click.echo(f"The old key ({continuity.fingerprint_of(old_key)}) vouches for the new "
                   f"one for {days} days (network.key_transition_days): pinned clients "
                   "follow it by themselves; clients first met after that compare the "
                   "fingerprint.")


def _kept_key(key_path: Path, cert_path: Path) -> tuple[tls.PrivateKey, list[str]]:
    """The key to keep (it must pass the same checks as at start) and the current SANs."""
    if not key_path.exists():
        fail(f"--keep-key: there is no {key_path} to keep; run generate without it")
    try:
        key = tls.load_key(key_path)
        old = list(tls.inspect_cert(tls.load_chain(cert_path)[0]).sans) \
            if cert_path.exists() else []
    except tls.CertificateError as e:
        fail(f"--keep-key: {e}")
        raise  # not reached: fail() exits
    return key, old


def _replace_cert(cert_path: Path, c: object) -> None:
    if cert_path.exists():
        os.replace(cert_path, cert_path.with_suffix(".pem.old"))
    tls.write_cert(cert_path, c)  # type: ignore[arg-type]


def _install_files(key_path: Path, cert_path: Path, key: tls.PrivateKey, c: object) -> None:
    for p in (key_path, cert_path):
        if p.exists():
            os.replace(p, p.with_suffix(".pem.old"))
    tls.write_key(key_path, key)
    tls.write_cert(cert_path, c)  # type: ignore[arg-type]


@cert.command("request")
@click.pass_obj
@click.option("--san", multiple=True, help="Subject alternative name (repeatable); default: "
              "the host names and listen addresses.")
@click.option("--out", type=click.Path(path_type=Path), help="Where to write (default: "
              "Resources/request.key and request.csr).")
def request(directory: Path, san: tuple[str, ...], out: Path | None) -> None:
    """Make a new key and a CSR to send to a certificate authority."""
    folder = open_folder(directory)
    settings = folder.settings()
    base = out or folder.resources
    base.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = base / "request.key", base / "request.csr"
    if key_path.exists():
        fail(f"{key_path} exists; install or remove the pending request first")
    key = tls.generate_key()
    sans = list(san) or tls.default_sans(settings.network.listen)
    csr = tls.make_csr(key, settings.network.publication_name, sans)
    tls.write_key(key_path, key)
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    click.echo(f"Private key: {key_path} (mode 0600; keep it on this server)")
    click.echo(f"Request:     {csr_path} (send this to your certificate authority)")
    click.echo(f"Then: casemate cert {directory} install --key {key_path} --cert SIGNED.pem")


@cert.command("install")
@click.pass_obj
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path))
@click.option("--cert", "cert_file", required=True, type=click.Path(path_type=Path),
              help="PEM certificate, optionally followed by its chain.")
@click.option("--no-endorse", is_flag=True, help="On a new key: do not let the old key vouch "
              "for it (see rotate --no-endorse).")
def install(directory: Path, key_file: Path, cert_file: Path, no_endorse: bool) -> None:
    """Check KEY and CERT (PEM, matching, chain in order, not expired), then install them.
    On a new key, the old key vouches for it as with rotate."""
    folder = open_folder(directory)
    try:
        chain, warnings = tls.check_pair(key_file, cert_file)
    except tls.CertificateError as e:
        fail(f"not installed: {e}")
        return
    if folder.key_path.exists() and not no_endorse:
        try:
            old_key = tls.load_key(folder.key_path)
        except tls.CertificateError as e:
            click.echo(f"warning: the old key cannot vouch for the new one ({e}): pinned "
                       "clients will refuse the new key until they compare and forget it")
        else:
            _endorse(folder.resources / "successor.pem", old_key, chain[0], folder.settings())
    for p in (folder.key_path, folder.cert_path):
        if p.exists():
            os.replace(p, p.with_suffix(".pem.old"))
    shutil.copyfile(cert_file, folder.cert_path)
    fd = os.open(folder.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_file.read_bytes())
    (folder.resources / GENERATED_MARKER).unlink(missing_ok=True)
    pending = folder.resources / "request.key"
    if pending.exists() and pending.resolve() == key_file.resolve():
        pending.unlink()  # the request is fulfilled: its key now lives in key.pem
        (folder.resources / "request.csr").unlink(missing_ok=True)
    for w in warnings:
        if "readable by group" not in w:
            click.echo(f"warning: {w}")
    click.echo("Installed:")
    for line in _describe(tls.inspect_cert(chain[0])):
        click.echo("  " + line)
    click.echo(f"Reload a running server with: casemate cert {directory} reload")


@cert.command("reload")
@click.pass_obj
def reload(directory: Path) -> None:
    """Ask the running server to load the current files (SIGHUP); bad files are refused."""
    folder = open_folder(directory)
    # Only a pid whose server still holds Logs/server.pid: a stale file names a process
    # that may be anything by now (see pidfile.py).
    pid = running_pid(folder.logs_dir)
    try:
        if pid is None:
            raise ProcessLookupError
        os.kill(pid, signal.SIGHUP)
    except OSError:
        fail(f"no running server found for {directory} (no server holds Logs/{PID_FILE})")
        return
    click.echo(f"Sent SIGHUP to server pid {pid}; see Logs/server.log for the result.")
