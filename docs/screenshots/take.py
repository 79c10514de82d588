"""Screenshots of the portal for the README, from the deterministic demo site.

    python docs/screenshots/take.py            # builds a throwaway demo database and server

Uses Debian's Chromium through Playwright, as the browser tests do.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
ADDR = "127.0.0.1:8799"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def manage(env, *args):
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)  # noqa: S603 (fixed arguments)


def sign_in(page, username, password):
    page.goto(f"http://{ADDR}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("networkidle")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DEBUG": "1", "DATABASE_URL": f"sqlite:///{tmp}/demo.sqlite3"}
        manage(env, "migrate", "--no-input", "-v0")
        # Today's demo, so the charts end at the real date the pages compute with.
        manage(env, "load_demo")
        server = subprocess.Popen(  # noqa: S603 (fixed arguments)
            [sys.executable, "manage.py", "runserver", "--noreload", ADDR],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(60):
                try:
                    urllib.request.urlopen(f"http://{ADDR}/accounts/login/")
                    break
                except OSError:
                    time.sleep(0.5)
            shoot()
        finally:
            server.terminate()
            server.wait()


def shoot():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        pi = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(pi, "mchen", "demo-password")
        pi.screenshot(path=OUT / "dashboard.png", full_page=True)
        pi.locator("table a[href^='/allocations/']").first.click()
        pi.wait_for_load_state("networkidle")
        pi.screenshot(path=OUT / "allocation.png", full_page=True)
        admin = browser.new_page(viewport={"width": 1280, "height": 900})
        sign_in(admin, "praman", "demo-password")
        admin.goto(f"http://{ADDR}/review/")
        admin.wait_for_load_state("networkidle")
        admin.screenshot(path=OUT / "review-queue.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
