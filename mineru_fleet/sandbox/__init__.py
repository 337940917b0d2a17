"""Throwaway real-systemd test hosts ("the sandbox") for mineru-fleet.

`mineru-fleet sandbox up [N] | status | down` (or ``python -m mineru_fleet.sandbox ...``) boots N
Debian 13 (trixie) containers ``mf1..mfN`` with ``systemd-nspawn`` on a controller whose PID 1 is
not systemd (a CI/dev machine).  Each container runs a real systemd as PID 1, sshd, and is reachable
over its own veth /30 link::

    container i:  host0 = 192.168.250.(4i+2)/30   controller side ve-mfI = 192.168.250.(4i+1)/30

The containers are air-gapped: they reach only the controller.  ``up`` therefore also starts a plain
HTTP file server (port 8780) serving ``<repo>/.sandbox/serve/`` on every container's controller IP,
so a deploy can fetch wheels etc. from ``file_server_url(controller_ip)``.

Layout (everything under ``<repo>/.sandbox/``, which is gitignored)::

    cache/rootfs-trixie-<hash>.tar   mmdebstrap output, built once (hash of suite + packages)
    base/                            the tarball extracted + prepared; shared read-only lower dir
    id_ed25519{,.pub}                client key, authorized for root in every container
    serve/                           what the file server serves
    run/mfI/{upper,work,root}        per-container overlayfs; root/ is the container's /
    run/mfI/*.pid, *.log             supervisor / nspawn / container-init PIDs and logs
    run/ssh_config                   connection reuse: ``ssh -F .sandbox/run/ssh_config mf1``
    run/testinfra_hosts.txt          ``ssh://root@IP,...`` for testinfra's ``--hosts=``
    run/hosts.json                   machine-readable host list
    run/fileserver.{pid,json,log}    the file server
    <repo>/inventory/sandbox.py      pyinfra inventory (group ``sandbox``), gitignored

Every process is started here in its own session and recorded by PID; ``down`` stops only those
PIDs (after checking their command line), never by process name.

Modules: ``config`` (instance paths, host names and addresses), ``image`` (controller packages, rootfs,
base dir), ``hosts`` (container lifecycle: up / status / down, the nspawn supervisor), ``network``
(veth, SSH, client files), ``fileserver``, ``procs`` (process helpers); the generators the tests and
``sandbox run`` use: ``tinymodel``, ``samplepdf``, ``modelhub`` (a local ModelScope-compatible hub),
``client`` (MinerU's client against a served host), ``quickstart`` (``mineru-fleet sandbox run``).
Nothing in ``roles/`` or ``mineru_fleet.core`` imports this package.
"""

from mineru_fleet.sandbox.config import (
    SandboxConfig,
    SandboxError,
    SandboxHost,
    default_config,
    file_server_url,
    repo_root,
    serve_dir,
)
from mineru_fleet.sandbox.hosts import down, running_hosts, status, stop_balancer, up
from mineru_fleet.sandbox.image import build_rootfs, ensure_host_deps, prepare_base
from mineru_fleet.sandbox.network import host_data, ssh, ssh_argv

__all__ = [
    "SandboxConfig", "SandboxError", "SandboxHost", "build_rootfs", "default_config", "down",
    "ensure_host_deps", "file_server_url", "host_data", "prepare_base", "repo_root", "running_hosts",
    "serve_dir", "ssh", "ssh_argv", "status", "stop_balancer", "up",
]
