"""The example app: fast, CPU-slow, I/O-slow, template-slow and async views,
a view with SQL (when SQLAlchemy is installed, see ``orders.py``), plus a
watched background job."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import threading
import time
from typing import Any

from flask import Flask, jsonify, render_template, request

from flask_perfwatch import PerfWatch, signals
from flask_perfwatch.metrics import PerformanceMetrics

perfwatch = PerfWatch()

PRODUCTS = [
    {"id": i, "name": f"Product {i}", "price": round(3 + (i * 7.31) % 90, 2),
     "category": ("books", "tools", "games")[i % 3]}
    for i in range(1, 5001)
]


def query_inventory(category: str) -> list[dict[str, Any]]:
    """Pretend to be a slow database query (I/O: the thread waits)."""
    time.sleep(0.8)
    return [p for p in PRODUCTS if p["category"] == category]


def price_forecast(count: int) -> list[float]:
    """CPU-bound work: a naive forecast per product."""
    forecast = []
    for product in PRODUCTS[:count]:
        value = 0.0
        for month in range(1, 400):
            value += math.sin(product["price"] * month) ** 2 / month
        forecast.append(round(value, 4))
    return forecast


@perfwatch.watch(threshold=0.3, name="jobs.rebuild_search_index")
def rebuild_search_index() -> int:
    """A background job watched on its own (it runs outside any request)."""
    index: dict[str, list[int]] = {}
    for product in PRODUCTS:
        for word in product["name"].lower().split():
            index.setdefault(word, []).append(product["id"])
        time.sleep(0.0001)
    return len(index)


def create_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        PERFWATCH_THRESHOLD=0.5,
        PERFWATCH_NOTIFIERS=["local"],
        PERFWATCH_REPORT_DIR=os.environ.get("PERFWATCH_REPORT_DIR", "perfwatch-reports"),
        PERFWATCH_DEDUP_WINDOW="1h",
    )
    app.config.update(config)
    perfwatch.init_app(app)

    @signals.slow_request.connect_via(app)
    def count_slow(sender: Flask, metrics: PerformanceMetrics, **extra: Any) -> None:
        # a subscriber of your own: metrics, statsd, a dashboard...
        sender.logger.info("slow %s: %.2fs", metrics.name, metrics.duration)

    endpoints = {
        "/products?category=books": "fast",
        "/inventory?category=tools": "I/O-slow (a slow query)",
        "/forecast?count=3000": "CPU-slow",
        "/catalog": "slow Jinja template",
        "/weather": "async view awaiting a slow API",
        "/jobs/rebuild": "starts a watched background job",
        "/health": "ignored by perfwatch",
    }
    if importlib.util.find_spec("sqlalchemy") is not None:
        from .orders import init_orders

        init_orders(app)
        endpoints["/orders?customer=7"] = "SQL one query per order (N+1), then a slow API"

    @app.get("/")
    def index() -> Any:
        return jsonify(endpoints=endpoints)

    @app.get("/products")
    def products() -> Any:
        category = request.args.get("category", "books")
        items = [p for p in PRODUCTS if p["category"] == category][:20]
        return jsonify(items=items)

    @app.get("/inventory")
    def inventory() -> Any:
        items = query_inventory(request.args.get("category", "tools"))
        return jsonify(count=len(items))

    @app.get("/forecast")
    def forecast() -> Any:
        count = min(int(request.args.get("count", 3000)), len(PRODUCTS))
        values = price_forecast(count)
        return jsonify(count=len(values), mean=sum(values) / len(values))

    @app.get("/catalog")
    def catalog() -> str:
        return render_template("catalog.html", products=PRODUCTS * 8)

    @app.get("/weather")
    async def weather() -> Any:
        await asyncio.sleep(0.7)  # a slow upstream API
        return jsonify(city=request.args.get("city", "Lisbon"), forecast="sunny")

    @app.get("/jobs/rebuild")
    def start_rebuild() -> Any:
        threading.Thread(target=rebuild_search_index, name="rebuild", daemon=True).start()
        return jsonify(started=True), 202

    @app.get("/health")
    @perfwatch.ignore
    def health() -> str:
        return "ok"

    return app
