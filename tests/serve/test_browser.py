"""The web page in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through
Selenium loads the page, submits a prompt, watches the progress bar move and sees the image appear.

Skipped only when the browser is missing and ``CI`` is not set; in CI a missing browser fails the test
(``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from .conftest import running_server


def _browser_parts() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return "chromium / chromedriver not found (apt-get install chromium chromium-driver)"
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    parts = _browser_parts()
    if isinstance(parts, str):
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the browser test cannot run: {parts}")
        pytest.skip(parts)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = parts[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(parts[1]), options=options)
    yield driver
    driver.quit()


def test_page_generates_an_image(engine, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    held, release = threading.Event(), threading.Event()

    def hold_first_step(job, step):  # keep the job at step 1 so the test sees the bar mid-way, untimed
        if step == 1 and not release.is_set():
            held.set()
            release.wait(60)

    with running_server(engine, step_hook=hold_first_step) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sampler_name option")) > 5)
        assert browser.find_element(By.ID, "model").text == "tiny-sd"
        browser.find_element(By.ID, "prompt").send_keys("a photo of the cat")
        for field, value in (("steps", "4"), ("seed", "3"), ("width", "32"), ("height", "24"), ("cfg_scale", "6")):
            element = browser.find_element(By.ID, field)
            element.clear()
            element.send_keys(value)
        Select(browser.find_element(By.ID, "sampler_name")).select_by_visible_text("Euler a")
        browser.find_element(By.ID, "generate").click()

        assert held.wait(120), "the request did not reach the server"
        bar = lambda d: float(d.find_element(By.ID, "progress").get_attribute("value"))  # noqa: E731
        wait.until(lambda d: bar(d) > 0)
        assert bar(browser) == pytest.approx(0.25)  # 1 of 4 steps, live
        assert "step 1 / 4" in browser.find_element(By.ID, "status").text
        wait.until(lambda d: d.find_element(By.ID, "preview").is_displayed())  # the running job's preview
        release.set()

        image = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery figure img"))[0]
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert size == [32, 24]
        caption = browser.find_element(By.CSS_SELECTOR, "#gallery figcaption").text
        assert "a photo of the cat" in caption and "Seed: 3" in caption and "Sampler: Euler a" in caption
        assert "Steps: 4" in caption and "CFG scale: 6" in caption and "Size: 32x24" in caption
        assert bar(browser) == 1.0
        assert not browser.find_element(By.ID, "preview").is_displayed()
        assert browser.find_element(By.ID, "status").text == "done: seed 3"

        steps = browser.find_element(By.ID, "steps")
        browser.execute_script("arguments[0].removeAttribute('min')", steps)  # past the form's own check
        steps.clear()
        steps.send_keys("0")
        browser.find_element(By.ID, "generate").click()
        status = browser.find_element(By.ID, "status")
        wait.until(lambda d: status.get_attribute("class") == "error")
        assert status.text.startswith("422: steps: must be in [1, 100]")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 1
