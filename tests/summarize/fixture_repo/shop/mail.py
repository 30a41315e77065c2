"""Receipts sent to customers by email."""
import smtplib
from email.message import EmailMessage


def send_receipt(address, order_id, total, host="localhost"):
    """Email the customer a receipt for their order through the SMTP server."""
    msg = EmailMessage()
    msg["To"] = address
    msg["Subject"] = f"Receipt for order {order_id}"
    msg.set_content(f"Thank you! You paid {total}.")
    with smtplib.SMTP(host) as smtp:
        smtp.send_message(msg)
