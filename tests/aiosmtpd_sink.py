#!/usr/bin/env python3
"""aiosmtpd as picorelay's smarthost for the interop test (tests/deliver.rs).

usage: aiosmtpd_sink.py CERT KEY USER PASSWORD OUTFILE

Listens on 127.0.0.1, an ephemeral port printed as the first line of stdout.
STARTTLS is required before anything else and AUTH (PLAIN or LOGIN) is required
after it, with USER/PASSWORD. Each accepted message is appended to OUTFILE as
header lines (mail_from=, rcpt=, tls=, auth=) then the message, then a line
"--end--".
"""

import asyncio
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

CERT, KEY, USER, PASSWORD, OUT = sys.argv[1:6]


class Handler:
    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        with open(OUT, "ab") as f:
            f.write(f"mail_from={envelope.mail_from}\n".encode())
            for r in envelope.rcpt_tos:
                f.write(f"rcpt={r}\n".encode())
            f.write(f"tls={'yes' if session.ssl is not None else 'no'}\n".encode())
            f.write(f"auth={session.auth_data}\n".encode())
            f.write(content)
            f.write(b"\n--end--\n")
        return "250 2.0.0 OK stored by aiosmtpd"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, auth_data=USER if ok else None)


async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(CERT, KEY)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            Handler(),
            hostname="aiosmtpd.test",
            tls_context=ctx,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=True,
            loop=loop,
        ),
        "127.0.0.1",
        0,
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
