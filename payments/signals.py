"""What payments announce. Receivers run inside the transaction that changed the money, so
whatever they grant is committed with the payment or not at all.

``order_paid``: sent with the :class:`~payments.models.Order` as sender and ``now=`` when
the confirmed payments first cover the order's amount. Sent once per order.
"""

from blinker import Namespace

_signals = Namespace()

order_paid = _signals.signal("order-paid")
