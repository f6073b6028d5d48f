"""The checker: run as `python -I -c <this source>` by trainer/sandbox/__init__.py, outside the sandbox.

It holds the verdict, so the program under test never runs in it: the program lives
in its sandbox and answers calls of its function over two pipes, as plain data
(trainer/sandbox/wire.py). Here the trusted context (e.g. HumanEval's prompt, whose
helpers the tests use) and the test run, with every call of the function forwarded
to the program. Exit status 0 means every check passed; the program cannot reach
this process (other namespaces, no shared file system) nor send it anything but data.
"""

import json
import os
import sys
import traceback

from trainer.sandbox.wire import decode, encode, receive, send  # inlined by trainer/sandbox/__init__.py


class ProgramError(Exception):
    """The program failed: it raised, ended, or sent something that is not plain data."""


def main():
    cfg = json.loads(sys.stdin.read())
    tx, rx = os.fdopen(cfg["tx"], "wb"), os.fdopen(cfg["rx"], "rb")
    first = receive(rx)
    if first is None:
        raise ProgramError("the program ended (or exited early) before its function could be called")
    if "error" in first:
        raise ProgramError("the program failed: %s" % first["error"])

    def candidate(*args, **kwargs):
        try:
            send(tx, {"args": encode(args), "kwargs": encode(kwargs)})
        except BrokenPipeError:
            raise ProgramError("the program ended during the test") from None
        reply = receive(rx)
        if reply is None:
            raise ProgramError("the program ended during a call")
        if "raised" in reply:
            raise ProgramError("the function raised %s" % reply["raised"])
        if "value" not in reply:
            raise ProgramError("malformed reply")
        return decode(reply["value"])

    namespace = {"__name__": "__check__"}
    exec(compile(cfg["context"], "context.py", "exec"), namespace)
    namespace[cfg["entry_point"]] = candidate  # tests that call it by name reach the program too
    exec(compile(cfg["test"], "test.py", "exec"), namespace)
    exec(compile(cfg["call"], "check.py", "exec"), namespace)


try:
    main()
except BaseException:  # noqa: B902 - any failure is a failed check, with its reason last
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os._exit(0)
