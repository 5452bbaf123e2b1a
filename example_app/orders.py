"""``/orders``: a customer's orders, read from SQLite through SQLAlchemy.

It does what many slow views do: one query per order for its lines (the
"N+1" a report flags), a little CPU to price them, and a call to a slow
payment API. Its report shows all three: the SQL table, the CPU row and the
line it waited at (see ``docs/reading-a-report.rst``).

Needs SQLAlchemy, which ``./dev demo`` installs; without it the example app
leaves this view out.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from .app import price_forecast

orders = Blueprint("orders", __name__)

CUSTOMERS, ORDERS_EACH, LINES_EACH = 20, 30, 4

ORDERS = text("SELECT id, placed FROM orders WHERE customer_id = :customer ORDER BY placed")
LINES = text("SELECT sku, quantity, price FROM order_lines WHERE order_id = :order")


def init_orders(app: Flask) -> None:
    """A private in-memory database for ``app`` (one connection shared by its
    threads), filled with made-up orders, and the view."""
    engine = create_engine("sqlite://", poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    with engine.begin() as db:
        db.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, "
                        "placed TEXT)"))
        db.execute(text("CREATE TABLE order_lines (order_id INTEGER, sku TEXT, "
                        "quantity INTEGER, price REAL)"))
        ids = [(c, c * 1000 + o) for c in range(1, CUSTOMERS + 1) for o in range(ORDERS_EACH)]
        db.execute(text("INSERT INTO orders VALUES (:id, :customer_id, :placed)"),
                   [{"id": i, "customer_id": c, "placed": f"2026-{i % 12 + 1:02d}-01"}
                    for c, i in ids])
        db.execute(text("INSERT INTO order_lines VALUES (:order, :sku, :quantity, :price)"),
                   [{"order": i, "sku": f"SKU-{i % 97}-{n}", "quantity": n + 1, "price": 3.5 + n}
                    for _, i in ids for n in range(LINES_EACH)])
    app.extensions["example_orders"] = engine
    app.register_blueprint(orders)


def payment_status(customer: int) -> str:
    """Ask the payment provider whether the customer's account is in good standing."""
    time.sleep(0.6)  # the provider's API, slow today
    return "ok"


@orders.get("/orders")
def list_orders() -> Any:
    customer = request.args.get("customer", 7, type=int)
    engine: Engine = current_app.extensions["example_orders"]
    result = []
    with engine.connect() as db:
        for order in db.execute(ORDERS, {"customer": customer}):
            lines = db.execute(LINES, {"order": order.id}).all()  # one query per order
            result.append({"id": order.id, "placed": order.placed,
                           "total": round(sum(line.quantity * line.price for line in lines), 2)})
    forecast = price_forecast(2500)  # the price trend shown beside the orders
    return jsonify(customer=customer, orders=result, trend=sum(forecast) / len(forecast),
                   payment=payment_status(customer))
