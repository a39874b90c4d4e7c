"""Helpers every test package shares: free ports, and the real dcmtk and Orthanc programs.

dcmtk's programs are found by absolute path (``/usr/bin/storescu``), never on
PATH: inside an activated virtual environment pynetdicom's apps of the same
names (``storescu``, ``storescp``, ``echoscu``) come first, and a test meant
for dcmtk would test pynetdicom against itself.  :func:`dcmtk` also checks the
program's version banner names DCMTK.
"""

from __future__ import annotations

import functools
import random
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib

#: a UNETR small enough to run a whole job in seconds on a CPU (random weights)
TINY_UNETR = {
    "img_size": [32, 32, 32],
    "feature_size": 4,
    "hidden_size": 48,
    "mlp_dim": 96,
    "num_heads": 4,
}

DCMTK_DIR = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PORTS = random.Random()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` is also what it gives outgoing connections as
    their source port: a test polling Orthanc's HTTP port while Orthanc starts could take the
    DICOM port it was about to listen on ("Address already in use", seen once in CI).  Ports
    below the ephemeral range are never given out that way.
    """
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = _PORTS.randrange(10000, max(low, 10001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 between 10000 and {low}")


@functools.cache
def dcmtk(program: str) -> str | None:
    """The absolute path of a dcmtk program (``storescu``, ...), or None when dcmtk is absent."""
    path = DCMTK_DIR / program
    if not path.is_file():
        return None
    banner = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return str(path) if "dcmtk" in (banner.stdout + banner.stderr).lower() else None


def orthanc() -> str | None:
    """The Debian package's Orthanc, or None."""
    return str(ORTHANC) if ORTHANC.is_file() else None


def storescu(
    inputs: Sequence[str | Path],
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    options: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """dcmtk's ``storescu [options] -aet CALLING -aec CALLED 127.0.0.1 PORT inputs...``."""
    tool = dcmtk("storescu")
    if tool is None:
        raise RuntimeError("dcmtk's storescu is not installed (Debian package dcmtk)")
    command = [tool, "-aet", calling_ae, "-aec", called_ae, *options, "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, inputs)], check=False, capture_output=True, text=True, timeout=timeout
    )


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """``nibabel.load`` typed as the NIfTI image our writers make (nibabel's stub says
    FileBasedImage, which has no ``affine`` or ``dataobj``)."""
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image), type(image)
    return image
