"""Run ``cli.py`` with one function wrapped to crash or signal this process at a chosen call (crash tests).

    OLM_HOOK="torch:save:torn:1" python tests/hooked_cli.py fit --config ...

``OLM_HOOK`` is ``<module>:<attribute path>:<action>:<n>``; on the n-th call (1-based) of the function:

  kill-before    SIGKILL this process before the call (none of it happens)
  kill-after     SIGKILL it right after the call returned
  torn           (``torch.save(obj, f)``) write the first half of the bytes to f, flush, then SIGKILL:
                 a save cut off mid-write
  enospc         (``torch.save(obj, f)``) write half, then raise OSError(ENOSPC), as a full disk does
  sigint-before  send SIGINT to this process, then make the call (a Ctrl+C landing just before it)
"""

from __future__ import annotations

import errno
import functools
import importlib
import io
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install(spec: str) -> None:
    module_name, attr_path, action, nth = spec.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real, calls = getattr(owner, name), [0]

    @functools.wraps(real)
    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] != int(nth):
            return real(*args, **kwargs)
        if action == "kill-before":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "sigint-before":
            os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        if action in ("torn", "enospc"):
            obj, fh = args[0], args[1]
            buffer = io.BytesIO()
            real(obj, buffer, *args[2:], **kwargs)
            data = buffer.getvalue()
            fh.write(data[: len(data) // 2])
            fh.flush()
            if action == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if action == "kill-after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, hooked)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import cli

    install(os.environ["OLM_HOOK"])
    cli.main(sys.argv[1:])
