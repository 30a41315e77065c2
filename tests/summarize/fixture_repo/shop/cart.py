"""The shopping cart."""


class Cart:
    """Items a customer is about to buy."""

    def __init__(self, tax_rate=0.2):
        self.items = []
        self.tax_rate = tax_rate

    def add_item(self, name, price, quantity=1):
        """Put ``quantity`` units of an item in the cart."""
        self.items.append((name, price, quantity))

    def total(self):
        """The price of everything in the cart, tax included."""
        net = sum(price * quantity for _, price, quantity in self.items)
        return round(net * (1 + self.tax_rate), 2)


def empty_cart():
    """A new cart with nothing in it."""
    return Cart()
