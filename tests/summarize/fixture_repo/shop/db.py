"""Storage of orders in an SQLite database."""
import sqlite3


def connect(url):
    """Open the SQLite database and create the orders table."""
    conn = sqlite3.connect(url)
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total REAL)")
    return conn


def save_order(conn, cart):
    """Insert the cart's total as a new row of the orders table in the database."""
    cur = conn.execute("INSERT INTO orders (total) VALUES (?)", (cart.total(),))
    conn.commit()
    return cur.lastrowid
