"""The page in a real browser: headless Chromium over WebDriver against a real `opschain server`.

Run by ./scripts/test (`python3 crates/opschain/tests/page/test_page.py`); it needs target/debug/opschain and
opschain-runner built, Debian's chromium and chromium-driver, and Python's selenium. Screenshots
go to docs/screenshots/.
"""

import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT, Server, browser, git_repo, log_in, wait_for  # noqa: E402

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

SHOTS = ROOT / "docs" / "screenshots"

ACTIONS = """
[actions.deploy]
description = "Deploy: prepare, release the tiers in parallel, verify"
run = 'echo "deploying"'
steps = ["prepare", "release", "verify"]
run_as = "sequential"

[actions.prepare]
run = 'printf "\\033[1;32mready\\033[0m to go\\n"'

[actions.release]
steps = ["release:web", "release:worker"]
run_as = "parallel"

[actions."release:web"]
run = 'echo "releasing web"; sleep 1'

[actions."release:worker"]
run = 'echo "releasing worker"; sleep 1'

[actions.verify]
run = 'echo "verified" >&2'

[actions.live]
description = "Prints a line, waits for the test's signal, prints another"
run = '''
echo "live step started"
for i in 1 2 3 4 5; do printf "\\033[36m[%d/5]\\033[0m fetching artefact %d\\n" $i $i; done
printf "\\033[33mwarning:\\033[0m cache is cold, the next step may be slow\\n" >&2
printf "\\033[1;32mok\\033[0m artefacts verified\\n"
while [ ! -e GO_FILE ]; do sleep 0.1; done
printf "\\033[31mLIVE-LINE\\033[0m printed while the page was open\\n"
while [ ! -e END_FILE ]; do sleep 0.1; done
'''

[actions.forever]
description = "Runs until cancelled"
run = 'echo "waiting for a cancel"; while true; do sleep 0.2; done'

[actions.many]
description = "Prints 5,000 numbered lines"
run = 'i=1; while [ $i -le 5000 ]; do echo "row $i of the long log"; i=$((i+1)); done'
"""


class PageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="opschain-page-test-")
        tmp = Path(cls.tmp.name)
        cls.go, cls.end = tmp / "go", tmp / "end"
        actions = ACTIONS.replace("GO_FILE", str(cls.go)).replace("END_FILE", str(cls.end))
        repo = git_repo(tmp / "repo", actions)
        cls.server = Server()
        cls.server.project("web", ["dev", "live", "ops", "long"], repo)
        cls.deploy = cls.server.change("web", "dev", "deploy", metadata={"ticket": "OPS-42"})
        cls.live = cls.server.change("web", "live", "live")
        cls.many = cls.server.change("web", "long", "many")
        cls.driver = browser()
        SHOTS.mkdir(parents=True, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        cls.end.touch()
        cls.go.touch()
        cls.driver.quit()
        cls.server.stop()
        cls.server.cleanup()
        cls.tmp.cleanup()

    def tearDown(self):
        # The browser's console has no error on any page a test visited.
        errors = [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        self.assertEqual(errors, [], "errors in the browser's console")

    def visit(self, path):
        self.driver.get(self.server.url + path)

    def shot(self, name):
        self.driver.save_screenshot(str(SHOTS / f"{name}.png"))

    def test_01_an_anonymous_browser_sees_nothing_but_the_login(self):
        for path in ("/", f"/changes/{self.deploy}", f"/changes/{self.deploy}/logs", "/projects/web/properties", f"/changes/{self.deploy}/logs.txt"):
            self.visit(path)
            self.assertTrue(self.driver.current_url.startswith(self.server.url + "/login?next="), f"{path} -> {self.driver.current_url}")
            self.assertNotIn("deploy", self.driver.find_element(By.TAG_NAME, "body").text)
            self.assertTrue(self.driver.find_elements(By.NAME, "username") and self.driver.find_elements(By.NAME, "password"))
        status, _ = self.server.request("GET", "/api/changes", user=None)
        self.assertEqual(status, 401)

    def test_02_a_wrong_password_is_refused_and_a_login_goes_back_to_the_page_asked_for(self):
        self.visit(f"/changes/{self.deploy}")
        self.driver.find_element(By.NAME, "username").send_keys("admin")
        self.driver.find_element(By.NAME, "password").send_keys("wrong")
        self.driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        error = wait_for("the refusal", lambda: self.driver.find_elements(By.CSS_SELECTOR, ".error"))[0]
        self.assertIn("wrong password", error.text)
        self.driver.get_log("browser")  # the 401 of the refused form is expected
        self.driver.find_element(By.NAME, "password").send_keys(Server.PASSWORDS["admin"], Keys.ENTER)
        wait_for("the change page after the login", lambda: self.driver.current_url == f"{self.server.url}/changes/{self.deploy}")

    def test_03_the_list_shows_a_change_made_through_the_api_and_new_ones_live(self):
        log_in(self.driver, self.server)
        row = self.driver.find_element(By.CSS_SELECTOR, f'#changes tr[data-id="{self.deploy}"]')
        self.assertIn("deploy", row.text)
        self.assertIn("admin", row.text)
        self.assertIn("web", row.text)
        self.driver.execute_script("window.notReloaded = true")
        later = self.server.change("web", "ops", "forever")
        type(self).forever = later
        wait_for("the new change to appear without a reload", lambda: self.driver.find_elements(By.CSS_SELECTOR, f'#changes tr[data-id="{later}"]'), timeout=15)
        self.assertTrue(self.driver.execute_script("return window.notReloaded === true"))
        # Filters are kept in the URL.
        self.visit("/?status=running&q=forever")
        wait_for("the running change", lambda: self.driver.find_elements(By.CSS_SELECTOR, f'#changes tr[data-id="{later}"]'), timeout=15)
        self.assertFalse(self.driver.find_elements(By.CSS_SELECTOR, f'#changes tr[data-id="{self.deploy}"]'))
        self.assertEqual(self.driver.find_element(By.NAME, "q").get_attribute("value"), "forever")
        self.server.wait_status(self.deploy, ("success", "error"))
        self.visit("/")
        wait_for("the list's statuses", lambda: "success" in self.driver.find_element(By.CSS_SELECTOR, f'#changes tr[data-id="{self.deploy}"] .status').text)
        self.shot("list")
        phone = browser(width=390, height=844)
        try:
            log_in(phone, self.server)
            phone.save_screenshot(str(SHOTS / "list-phone.png"))
        finally:
            phone.quit()

    def test_04_the_change_page_shows_its_step_tree_and_statuses(self):
        self.assertEqual(self.server.wait_status(self.deploy, ("success", "error")), "success")
        self.visit(f"/changes/{self.deploy}")
        self.assertEqual(self.driver.find_element(By.ID, "change-status").text, "success")
        steps = {el.find_element(By.CSS_SELECTOR, ".step-action").text: el.find_element(By.CSS_SELECTOR, ".status").text
                 for el in self.driver.find_elements(By.CSS_SELECTOR, "li.node")}
        self.assertEqual(steps, {a: "success" for a in ("deploy", "prepare", "release", "release:web", "release:worker", "verify")})
        parallel = self.driver.find_elements(By.CSS_SELECTOR, "ul.par > li.node .step-action")
        self.assertEqual(sorted(e.text for e in parallel), ["release:web", "release:worker"])
        sequence = self.driver.find_elements(By.CSS_SELECTOR, "ol.root > li > ol.seq > li.node > .step .step-action")
        self.assertEqual([e.text for e in sequence], ["prepare", "release", "verify"])
        self.assertIn("OPS-42", self.driver.find_element(By.CSS_SELECTOR, ".metadata pre").get_attribute("textContent"))
        self.assertTrue(self.driver.find_elements(By.CSS_SELECTOR, 'a[href$="/logs?children=1"]'), "a step with children links its log with theirs")
        self.assertFalse(self.driver.find_elements(By.ID, "cancel"), "an ended change has no Cancel")
        self.shot("change")
        # A step's own log, with its ANSI colours.
        prepare = self.driver.find_element(By.XPATH, "//div[span[@class='step-action' and text()='prepare']]//a[text()='log']")
        prepare.click()
        line = wait_for("the step's line", lambda: self.driver.find_elements(By.CSS_SELECTOR, "#log .ln .msg span.a-b.f2"))
        self.assertEqual(line[0].text, "ready")

    def test_05_a_line_printed_by_a_running_step_appears_without_a_reload(self):
        self.server.wait_status(self.live, ("running",))
        self.visit(f"/changes/{self.live}/logs")
        wait_for("the step's first line", lambda: "live step started" in self.driver.find_element(By.ID, "log").text, timeout=20)
        self.driver.execute_script("window.notReloaded = true")
        self.go.touch()
        wait_for("the live line", lambda: "LIVE-LINE" in self.driver.find_element(By.ID, "log").text, timeout=20)
        self.assertTrue(self.driver.execute_script("return window.notReloaded === true"))
        self.assertTrue(self.driver.find_elements(By.CSS_SELECTOR, "#log .ln .msg span.f1"), "the red line is drawn red")
        self.assertTrue(self.driver.find_element(By.ID, "follow").is_selected())
        self.driver.find_element(By.ID, "timestamps").click()
        self.shot("live-log")
        self.driver.find_element(By.ID, "timestamps").click()
        # The change page of a running change ticks its durations.
        self.visit(f"/changes/{self.live}")
        duration = self.driver.find_element(By.CSS_SELECTOR, "[data-step-duration]")
        first = duration.text
        wait_for("the running step's duration to tick", lambda: duration.text != first, timeout=5)
        self.end.touch()
        self.server.wait_status(self.live, ("success",))
        wait_for("the page to show the end", lambda: self.driver.find_element(By.ID, "change-status").text == "success", timeout=15)

    def test_06_search_finds_a_line_and_a_deep_link_scrolls_to_it(self):
        self.server.wait_status(self.many, ("success",))
        self.visit(f"/changes/{self.many}/logs")
        wait_for("the log's last lines", lambda: "row 5000 of" in self.driver.find_element(By.ID, "log").text)
        box = self.driver.find_element(By.ID, "search-text")
        box.send_keys("ROW 1234 of", Keys.ENTER)
        wait_for("the match count", lambda: self.driver.find_element(By.ID, "search-count").text == "1 of 1")
        current = wait_for("the match", lambda: self.driver.find_elements(By.CSS_SELECTOR, "#log .ln.current"))[0]
        self.assertIn("row 1234 of the long log", current.text)
        self.assertTrue(self.in_view(current), "the match is scrolled into view")
        self.assertEqual(current.find_element(By.TAG_NAME, "mark").text, "row 1234 of")
        lines = len(self.driver.find_elements(By.CSS_SELECTOR, "#log .ln"))
        self.assertLessEqual(lines, 3000, "never the whole log in the document")
        # Next and previous walk the matches.
        box.clear()
        box.send_keys("row 10", Keys.ENTER)
        wait_for("the first of many matches", lambda: self.driver.find_element(By.ID, "search-count").text.startswith("1 of "))
        wait_for("the first match", lambda: "row 10 of" in self.driver.find_element(By.CSS_SELECTOR, "#log .ln.current").text)
        self.driver.find_element(By.ID, "search-next").click()
        wait_for("the second match", lambda: self.driver.find_element(By.ID, "search-count").text.startswith("2 of "))
        wait_for("the second match's line", lambda: "row 100 of" in self.driver.find_element(By.CSS_SELECTOR, "#log .ln.current").text)
        self.driver.find_element(By.ID, "search-prev").click()
        wait_for("back to the first", lambda: self.driver.find_element(By.ID, "search-count").text.startswith("1 of "))
        # A link to a line.
        found = self.server.api("GET", f"/api/changes/{self.many}/log_lines?filter%5Bmessage_cont%5D=row%202345%20of")["data"]
        self.assertEqual(len(found), 1)
        line = found[0]["id"]
        self.visit(f"/changes/{self.many}/logs#L{line}")
        target = wait_for("the linked line", lambda: self.driver.find_elements(By.CSS_SELECTOR, f"#L{line}.target"))[0]
        self.assertIn("row 2345 of", target.text)
        self.assertTrue(self.in_view(target), "the linked line is scrolled into view")
        # Scrolling up loads earlier lines.
        self.driver.execute_script("document.getElementById('log').scrollTop = 0")
        wait_for("earlier lines", lambda: self.driver.find_elements(By.ID, f"L{int(line) - 400}"), timeout=10)
        # The raw text, whole.
        status, text = self.raw(f"/changes/{self.many}/logs.txt")
        self.assertEqual(status, 200)
        rows = [line for line in text.splitlines() if line.endswith(" of the long log")]
        self.assertEqual(len(rows), 5000)
        self.assertTrue(rows[-1].endswith("| row 5000 of the long log"), rows[-1])
        total = self.server.api("GET", f"/api/changes/{self.many}/log_lines?page%5Bsize%5D=1")["meta"]["last_id"]
        self.assertEqual(len(text.splitlines()), total, "every line of the log, once")

    def raw(self, path):
        cookie = self.driver.get_cookie("opschain_session")["value"]
        import urllib.request
        request = urllib.request.Request(self.server.url + path, headers={"Cookie": f"opschain_session={cookie}"})
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()

    def in_view(self, element):
        return self.driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(), b = document.getElementById('log').getBoundingClientRect();"
            "return r.top >= b.top && r.bottom <= b.bottom", element)

    def test_07_a_viewer_sees_no_cancel_and_cancel_cancels(self):
        self.server.wait_status(self.forever, ("running",))
        viewer = browser()
        try:
            log_in(viewer, self.server, user="viewer")
            viewer.get(f"{self.server.url}/changes/{self.forever}")
            self.assertEqual(viewer.find_element(By.ID, "change-status").text, "running")
            self.assertFalse(viewer.find_elements(By.ID, "cancel"), "a viewer is not offered Cancel")
            self.assertFalse(viewer.find_elements(By.ID, "retry"))
        finally:
            viewer.quit()
        self.visit(f"/changes/{self.forever}")
        self.driver.find_element(By.ID, "cancel").click()
        dialog = self.driver.find_element(By.TAG_NAME, "dialog")
        self.assertIn("Cancel change", dialog.text)
        self.driver.find_element(By.ID, "confirm-no").click()
        self.assertEqual(self.server.status(self.forever), "running", "No cancels nothing")
        self.driver.find_element(By.ID, "cancel").click()
        self.driver.find_element(By.ID, "confirm-yes").click()
        self.assertEqual(self.server.wait_status(self.forever, ("cancelled",)), "cancelled")
        wait_for("the page to show it cancelled", lambda: self.driver.find_element(By.ID, "change-status").text == "cancelled", timeout=15)
        wait_for("Retry to be offered", lambda: self.driver.find_elements(By.ID, "retry"), timeout=15)
        events = self.server.api("GET", "/api/events?filter[kind_eq]=change.cancel")["data"]
        self.assertEqual(events[0]["attributes"]["username"], "admin")

    def test_08_a_form_without_the_session_csrf_token_is_refused(self):
        self.server.wait_status(self.forever, ("cancelled",))
        cookie = self.driver.get_cookie("opschain_session")["value"]
        import urllib.error
        import urllib.request
        request = urllib.request.Request(f"{self.server.url}/changes/{self.forever}/retry", data=b"csrf=forged", method="POST",
                                         headers={"Cookie": f"opschain_session={cookie}", "Content-Type": "application/x-www-form-urlencoded"})
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        self.assertEqual(refused.exception.code, 403)
        self.assertEqual(self.server.status(self.forever), "cancelled")

    def test_09_the_properties_page_shows_a_diff_between_two_versions(self):
        doc = {"app": {"version": "1.0", "replicas": 2}, "feature": {"beta": False}}
        self.server.api("PUT", "/api/projects/web/properties", {"data": {"type": "properties", "attributes": {"data": doc}}})
        doc = {"app": {"version": "1.1", "replicas": 2}, "feature": {"beta": True, "dark_mode": "on"}}
        self.server.api("PUT", "/api/projects/web/properties", {"data": {"type": "properties", "attributes": {"data": doc}}})
        self.visit("/projects/web/properties")
        rows = {r.find_element(By.CSS_SELECTOR, "td.path code").text: (r.find_element(By.CSS_SELECTOR, "td.before").text, r.find_element(By.CSS_SELECTOR, "td.after").text)
                for r in self.driver.find_elements(By.CSS_SELECTOR, "#diff tbody tr")}
        self.assertEqual(rows["/app/version"], ('"1.0"', '"1.1"'))
        self.assertEqual(rows["/feature/beta"], ("false", "true"))
        self.assertEqual(rows["/feature/dark_mode"], ("", '"on"'))
        self.assertNotIn("/app/replicas", rows)
        versions = self.driver.find_element(By.CSS_SELECTOR, "table.versions").text
        self.assertIn("admin", versions)
        self.shot("properties-diff")
        # Any two versions: the first edit against the empty version.
        self.driver.find_element(By.CSS_SELECTOR, 'input[name=from][value="0"]').click()
        self.driver.find_element(By.CSS_SELECTOR, 'input[name=to][value="1"]').click()
        self.driver.find_element(By.ID, "compare").click()
        wait_for("the other diff", lambda: "from=0" in self.driver.current_url)
        paths = [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, "#diff td.path code")]
        self.assertEqual(sorted(paths), ["/app", "/feature"])
        # An environment's properties, written by the step of a change (the deploy's steps
        # write none here: an edit through the API).
        self.visit("/projects/web/environments/dev/properties")
        self.assertIn("dev properties", self.driver.find_element(By.TAG_NAME, "h1").text)

    def test_10_a_secret_value_is_never_shown(self):
        secrets = Path(self.tmp.name) / "secrets.json"
        secrets.write_text('{"DB_PASSWORD": "s3cret-value-xyz"}')
        import subprocess
        from harness import OPSCHAIN
        subprocess.run([str(OPSCHAIN), "secrets", "set", "prod", "--file", str(secrets)], env=self.server.env, check=True, capture_output=True)
        doc = {"db": {"password": "s3cret-value-xyz", "host": "db.internal"}}
        self.server.api("PUT", "/api/projects/web/properties", {"data": {"type": "properties", "attributes": {"data": doc}}})
        self.visit("/projects/web/properties")
        page = self.driver.page_source
        self.assertNotIn("s3cret-value-xyz", page)
        self.assertIn("****", self.driver.find_element(By.ID, "current").text)

    def test_11_log_out_ends_the_session(self):
        self.visit("/")
        self.driver.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        wait_for("the login page", lambda: "/login" in self.driver.current_url)
        self.visit("/")
        self.assertIn("/login?next=", self.driver.current_url)


if __name__ == "__main__":
    unittest.main(verbosity=2)
