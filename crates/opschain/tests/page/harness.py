"""What the page's browser tests and its benchmark share: a real `opschain server` on a free
loopback port with its own state directory and users, a JSON:API client, a git repository of
actions, and headless Chromium driven over WebDriver with Debian's chromedriver."""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
OPSCHAIN = Path(os.environ.get("OPSCHAIN_BIN", TARGET / "debug" / "opschain"))
RUNNER = Path(os.environ.get("OPSCHAIN_RUNNER_BIN", TARGET / "debug" / "opschain-runner"))
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MEDIA = "application/vnd.api+json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30.0, every=0.1):
    """Calls `check` until it returns something true; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # the check's own failure is retried, and reported at the end
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))


class Server:
    """`opschain server` on a free loopback port, its state in a temporary directory, with an
    admin (`admin`) and a viewer (`viewer`)."""

    PASSWORDS = {"admin": "admin-password-1", "viewer": "viewer-password-1"}

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="opschain-page-"))
        self.state = self.dir / "state"
        self.env = dict(os.environ, OPSCHAIN_STATE_DIR=str(self.state), OPSCHAIN_RUNNER_BIN=str(RUNNER), OPSCHAIN_GRACE_SECS="2",
                        OPSCHAIN_FAILED_LOGIN_DELAY_MS="50", OPSCHAIN_SHUTDOWN_GRACE_SECS="2")
        for key in ("OPSCHAIN_REPO_FOLDER", "OPSCHAIN_BACKEND", "OPSCHAIN_LISTEN"):
            self.env.pop(key, None)
        for name, role in (("admin", "admin"), ("viewer", "viewer")):
            subprocess.run([str(OPSCHAIN), "user", "add", name, "--password-stdin", "--role", role], input=self.PASSWORDS[name] + "\n",
                           env=self.env, check=True, capture_output=True, text=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "server.log", "w")
        self.process = subprocess.Popen([str(OPSCHAIN), "server", "--listen", f"127.0.0.1:{self.port}"], env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        wait_for("the server to answer", lambda: self.request("GET", "/api/healthcheck", user=None)[0] == 200, timeout=30)

    def request(self, method, path, body=None, user="admin"):
        """(status, parsed document or None) of an API request as `user` (HTTP Basic)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", MEDIA)
        if data is not None:
            request.add_header("Content-Type", MEDIA)
        if user:
            token = base64.b64encode(f"{user}:{self.PASSWORDS[user]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
                return response.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, None

    def api(self, method, path, body=None, user="admin", expect=(200, 201)):
        status, doc = self.request(method, path, body, user)
        assert status in expect, f"{method} {path}: {status} {doc}"
        return doc

    def project(self, code, environments, repo):
        """Creates project `code` with `environments` and git remote `origin` at `repo`."""
        self.api("POST", "/api/projects", {"data": {"type": "projects", "attributes": {"code": code, "name": code.title()}}})
        for env in environments:
            self.api("POST", f"/api/projects/{code}/environments", {"data": {"type": "environments", "attributes": {"code": env, "name": env.title()}}})
        self.api("POST", f"/api/projects/{code}/git_remotes", {"data": {"type": "git_remotes", "attributes": {"name": "origin", "url": str(repo)}}})

    def change(self, project, environment, action, metadata=None):
        """Creates a change; its id."""
        attributes = {"project_code": project, "environment_code": environment, "action": action, "git_remote_name": "origin", "git_rev": "HEAD"}
        if metadata:
            attributes["metadata"] = metadata
        doc = self.api("POST", "/api/changes", {"data": {"type": "changes", "attributes": attributes}})
        return int(doc["data"]["id"])

    def status(self, change_id):
        return self.api("GET", f"/api/changes/{change_id}")["data"]["attributes"]["status"]

    def wait_status(self, change_id, statuses, timeout=60):
        return wait_for(f"change {change_id} to be {statuses}", lambda: self.status(change_id) in statuses and self.status(change_id), timeout=timeout, every=0.2)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def git_repo(directory, actions_toml, properties=None):
    """A git repository at `directory` whose `.opschain/actions.toml` is `actions_toml`."""
    directory = Path(directory)
    (directory / ".opschain").mkdir(parents=True, exist_ok=True)
    (directory / ".opschain" / "actions.toml").write_text(actions_toml)
    (directory / ".opschain" / "properties.json").write_text(json.dumps(properties or {}))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]):
        subprocess.run(["git", "-C", str(directory), *args], check=True)
    return directory


def browser(width=1280, height=900):
    """Headless Chromium over WebDriver (Debian's chromedriver), its console kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def log_in(driver, server, user="admin"):
    from selenium.webdriver.common.by import By

    driver.get(server.url + "/login")
    driver.find_element(By.NAME, "username").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(Server.PASSWORDS[user])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for("the login to land on the changes", lambda: driver.current_url.rstrip("/") == server.url and driver.find_elements(By.ID, "changes"))
