"""The action's own process in a local container: one activation per line of stdin, answers on fd 3.

``runtime.py`` writes this file into the action's folder as ``exec__.py`` (naming the entry point
in the import line, as OpenWhisk's Python runtime does) and starts it through the folder's
``exec`` script, so the action runs as it would there: from its own folder, ``sys.argv`` of
``['exec__.py']``, only the environment the runtime gives it, its ``virtualenv/`` activated.
Stdlib only and Python 3.8+ syntax: it runs under the action kind's interpreter.
"""
import json
import os
import sys
import traceback


def _activate_virtualenv() -> None:
    """Put the zip's ``virtualenv/`` on the path through its ``activate_this.py``, if it has one."""
    folder = os.path.abspath("virtualenv")
    if not os.path.isdir(folder):
        return
    script = os.path.join(folder, "bin", "activate_this.py")
    if not os.path.exists(script):
        sys.stderr.write("Invalid virtualenv: the zip has no virtualenv/bin/activate_this.py.\n")
        sys.exit(1)
    with open(script) as f:
        exec(compile(f.read(), script, "exec"), {"__file__": script})


def serve() -> None:
    """Load the action, acknowledge it, then run one activation per line until stdin ends."""
    _activate_virtualenv()
    from main__ import main as main  # runtime.py puts the entry point's name in this line

    answers = os.fdopen(3, "wb")
    if os.environ.get("__OW_WAIT_FOR_ACK"):
        answers.write(b'{"ok": true}\n')
        answers.flush()
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        message = json.loads(line)
        value = {}
        for key, field in message.items():
            if key == "value":
                value = field
            else:  # what is not the parameters describes the activation
                os.environ["__OW_" + key.upper()] = field
        try:
            result = main(value)
        except Exception as exc:  # the action's own failure: an application error
            traceback.print_exc()
            result = {"error": str(exc)}
        answer = json.dumps(result, ensure_ascii=False).encode("utf-8")  # a set ends the process here
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(answer + b"\n")
        answers.flush()


if __name__ == "__main__":
    serve()
