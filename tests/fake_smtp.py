"""A local SMTP server for the tests: it speaks enough SMTP for smtplib (EHLO, MAIL, RCPT,
DATA, RSET, NOOP, QUIT), keeps what it was sent, counts connections, and can be told to
refuse the next N messages with a temporary error (451)."""

from __future__ import annotations

import socketserver
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message


@dataclass
class Mailbox:
    messages: list[Message] = field(default_factory=list)
    connections: int = 0
    #: How many coming messages get "451 try again later".
    refuse_next: int = 0
    #: Seconds between taking a message and saying so (a slow server: the sender waits).
    ack_delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(box: Mailbox) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            with box.lock:
                box.connections += 1
            self.reply("220 fake-smtp ready")
            while line := self.rfile.readline():
                verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    self.reply("250 fake-smtp")
                elif verb == "MAIL":
                    with box.lock:
                        refused = box.refuse_next > 0
                        box.refuse_next -= refused
                    self.reply("451 try again later" if refused else "250 ok")
                elif verb in ("RCPT", "RSET", "NOOP"):
                    self.reply("250 ok")
                elif verb == "DATA":
                    self.reply("354 go on")
                    data = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data += chunk
                    with box.lock:
                        box.messages.append(message_from_bytes(data))
                    time.sleep(box.ack_delay)
                    self.reply("250 queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("502 not here")

    return Handler


def start() -> tuple[Mailbox, socketserver.ThreadingTCPServer]:
    box = Mailbox()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _handler(box))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return box, server
