"""A machine for Ray's `local` (on-prem) cluster launcher, made on this one: an `sshd` on a free
loopback port whose sessions run in their own PID and mount namespaces, with a home of their own.

So `ray up`, `ray submit`, `ray exec` and `ray down` work over real SSH and rsync as against a lab
machine, and nothing they do reaches the rest of this machine: the `ray stop` that the launcher runs
on the head sees (and kills) only the cluster's processes, and what it writes to `~` (the bootstrap
config and key, `~/.bashrc`, the synced checkout) lands in the private home. Stopping the server
ends its namespace, and with it every process the cluster started; the keys and the home go with
the temporary directory. Needs root (namespaces, `sshd`), as CI and the sessions here run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from infra.local_stack import LOOPBACK, free_port, stop

PACKAGES = {"/usr/sbin/sshd": "openssh-server", "/usr/bin/rsync": "rsync", "/usr/bin/nc": "netcat-openbsd"}


def install_missing_packages() -> None:
    """openssh-server, rsync and nc from Debian's packages, when this machine lacks them."""
    missing = sorted({pkg for path, pkg in PACKAGES.items() if not Path(path).exists()})
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"the on-prem cluster test needs {', '.join(missing)} (install as root: "
                           f"apt-get install {' '.join(missing)})")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


class SshHead:
    def __init__(self):
        install_missing_packages()
        self.dir = Path(tempfile.mkdtemp(prefix="rayup-", dir="/tmp"))  # short: Ray's socket paths live under it
        self.home = self.dir / "home"
        self.home.mkdir(mode=0o700)
        (self.home / ".bashrc").write_text("")
        self.key = self.dir / "user_key"
        for key in (self.dir / "host_key", self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.dir / "authorized_keys")
        self.port = free_port()
        (self.dir / "sshd_config").write_text("\n".join([
            f"ListenAddress {LOOPBACK}:{self.port}", f"HostKey {self.dir / 'host_key'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}", f"PidFile {self.dir / 'sshd.pid'}",
            "AllowUsers root", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "LogLevel ERROR",
            "Subsystem sftp internal-sftp", ""]))
        # The private home replaces /root inside the namespace; the Python install under /root stays
        # visible there (this venv's interpreter lives in it).
        pyenv = Path.home() / ".pyenv"
        binds = (f"mkdir -p {self.home}/.pyenv && mount --bind {pyenv} {self.home}/.pyenv && "
                 if pyenv.exists() else "")
        script = (f"{binds}mount --rbind {self.home} {Path.home()} && mkdir -p /run/sshd && "
                  f"exec /usr/sbin/sshd -D -e -f {self.dir / 'sshd_config'}")
        self.log = self.dir / "sshd.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["unshare", "--pid", "--kill-child", "--mount-proc", "--propagation",
                                          "private", "sh", "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 30) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex((LOOPBACK, self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not listen on {LOOPBACK}:{self.port} in {timeout:.0f}s")

    @property
    def auth(self) -> dict:
        """The `auth` block of a cluster config that logs in to this head."""
        return {"ssh_user": "root", "ssh_private_key": str(self.key),
                "ssh_proxy_command": f"nc {LOOPBACK} {self.port}"}

    def close(self) -> None:
        # unshare blocks SIGTERM (util-linux 2.38), so stop() alone would wait out its 15 s before SIGKILL:
        # the signal goes to its process group, sshd included, the namespace's init. When sshd exits,
        # every process of the namespace goes, and unshare exits with it.
        os.killpg(self.proc.pid, signal.SIGTERM)
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
