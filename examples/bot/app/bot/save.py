"""``python3 -m bot.save``: ask the running bot to persist now.

This is slipway's ``[service] save`` command (snapshot step): it POSTs
/admin/save and exits 0 once the bot acknowledges, non-zero with a message
on stderr otherwise (1: no acknowledgement, 2: bad usage).
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from bot import DEFAULT_PORT


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m bot.save", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None,
                        help=f"bot port (env BOT_PORT, default {DEFAULT_PORT})")
    parser.add_argument("--url", default=None,
                        help="full URL of the save endpoint (overrides --port)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the acknowledgement (default 30)")
    args = parser.parse_args(argv)

    url = args.url
    if url is None:
        port = args.port if args.port is not None else os.environ.get("BOT_PORT", DEFAULT_PORT)
        url = f"http://127.0.0.1:{port}/admin/save"

    # The bot is local: never route this through an HTTP(S)_PROXY from the env.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with opener.open(request, timeout=args.timeout) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace").strip()
        print(f"bot.save: {url} answered {e.code} {e.reason}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"bot.save: cannot reach the bot at {url}: {reason} "
              "(is it running? set BOT_PORT or --port)", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"bot.save: {url} sent a reply that is not JSON: {e}", file=sys.stderr)
        return 1

    if not isinstance(body, dict) or body.get("saved") is not True:
        print(f"bot.save: {url} did not acknowledge the save: {body!r}", file=sys.stderr)
        return 1
    print(f"bot.save: saved ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
