"""Channels: how a message reaches a customer.

The port is one method, `send(message) -> SendResult`; a channel that writes
what it accepted in bulk also has `settle()`, which the dispatcher calls after
each batch (`port.settle`). This foundation ships
the local sink provider that closeloop's demo and tests deliver to; SMTP,
Twilio SMS/WhatsApp and signed webhooks plug in behind the same port.
"""

from __future__ import annotations

from closeloop.channels.port import Channel, OutgoingMessage, SendResult, settle
from closeloop.channels.sink import SinkChannel
from closeloop.channels.templates import render_message

__all__ = ["Channel", "OutgoingMessage", "SendResult", "SinkChannel", "render_message", "settle"]
