"""The latent explorer page (service/http/explorer) in a real browser: Debian's chromium, headless, driven by
Selenium through chromedriver, against a real server on the shipped mnist, mnist2d and emoji models. Each test
clicks through one feature and checks the pictures the page shows (read back from the page's own <img> elements
through a canvas) change as they should. With EXPLORER_SCREENSHOTS=DIR the screenshots are written there too
(docs/images/explorer_*.png come from such a run: `EXPLORER_SCREENSHOTS=docs/images make test`)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.config import DEFAULT_REPOSITORY, Settings
from service.inprocess import ServerThread, serving

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MODELS = ("mnist", "mnist2d", "emoji")
WAIT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("explorer_repository")
    for name in MODELS:
        shutil.copyfile(DEFAULT_REPOSITORY / f"{name}.vae.json", repo / f"{name}.vae.json")
        for part in ("encoder", "decoder"):
            shutil.copytree(DEFAULT_REPOSITORY / f"{name}_{part}", repo / f"{name}_{part}")
    (repo / "default_model").write_text("mnist\n")
    settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, http_port=0, model_repository=repo,
                        max_batch_size=64)  # fmt: skip
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: ServerThread) -> Iterator[webdriver.Chrome]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "Debian's chromium and chromium-driver (make setup) are needed"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    assert server.running is not None
    driver.get(f"http://127.0.0.1:{server.running.http_port}/")
    try:
        _idle(driver)
        yield driver
    finally:
        driver.quit()


def _idle(driver: webdriver.Chrome) -> None:
    """Every request the page made has been answered, and every image it was given has loaded."""
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script(
            "return document.body.dataset.pending === '0' && document.getElementById('status').textContent !== ''"
            " && Array.from(document.images).every(i => !i.src || i.complete)"
        )
    )


def pixels(driver: webdriver.Chrome, element_id: str) -> np.ndarray:
    """An <img> of the page as the browser decoded it: RGB uint8 [H, W, 3] at its natural size."""
    data_url = driver.execute_script(
        """const img = document.getElementById(arguments[0]);
           const canvas = document.createElement('canvas');
           canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
           canvas.getContext('2d').drawImage(img, 0, 0);
           return canvas.toDataURL('image/png');""",
        element_id,
    )
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as picture:
        return np.asarray(picture.convert("RGB"))


def _updates(driver: webdriver.Chrome, element_id: str) -> int:
    return int(driver.find_element(By.ID, element_id).get_attribute("data-updates") or 0)


def _after(driver: webdriver.Chrome, element_id: str, before: int) -> None:
    WebDriverWait(driver, WAIT_S).until(lambda d: _updates(d, element_id) > before)
    _idle(driver)


def _screenshot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    target = os.environ.get("EXPLORER_SCREENSHOTS")
    if target:
        driver.save_screenshot(str(Path(target) / f"explorer_{name}.png"))


def _choose(driver: webdriver.Chrome, model: str) -> None:
    before = _updates(driver, "samples")
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    _after(driver, "samples", before)


def test_the_page_lists_the_models_and_shows_a_sample_grid(browser: webdriver.Chrome, tmp_path: Path) -> None:
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert sorted(options) == sorted(MODELS)
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "mnist"
    grid = pixels(browser, "samples")
    assert grid.shape == (4 * 29 + 1, 4 * 29 + 1, 3) and grid.std() > 20  # 16 digits, not a blank
    assert len(browser.find_elements(By.CSS_SELECTOR, "#thumbnails img")) == 16
    _screenshot(browser, "mnist", tmp_path)


def test_seed_and_temperature_change_the_samples_and_the_same_seed_gives_them_back(browser: webdriver.Chrome) -> None:
    first = pixels(browser, "samples")
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("2")
    before = _updates(browser, "samples")
    browser.find_element(By.ID, "sample").click()
    _after(browser, "samples", before)
    assert not np.array_equal(pixels(browser, "samples"), first)
    browser.execute_script("const t = document.getElementById('temperature'); t.value = '0.1';")
    before = _updates(browser, "samples")
    browser.find_element(By.ID, "sample").click()
    _after(browser, "samples", before)
    cold = pixels(browser, "samples")
    browser.execute_script("document.getElementById('temperature').value = '1';")
    seed.clear()
    seed.send_keys("1")
    before = _updates(browser, "samples")
    browser.find_element(By.ID, "sample").click()
    _after(browser, "samples", before)
    np.testing.assert_array_equal(pixels(browser, "samples"), first)  # reproducible from its seed
    tiles = cold[1:117, 1:117].reshape(4, 29, 4, 29, 3)[:, :28, :, :28]
    warm = first[1:117, 1:117].reshape(4, 29, 4, 29, 3)[:, :28, :, :28]
    assert tiles.std(axis=(0, 2)).mean() < warm.std(axis=(0, 2)).mean()  # near the prior's mean: alike


def test_the_walk_goes_from_the_first_chosen_sample_to_the_second(browser: webdriver.Chrome) -> None:
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#thumbnails img")
    before = _updates(browser, "walk-row")
    thumbs[3].click()  # start
    _after(browser, "walk-row", before)
    before = _updates(browser, "walk-row")
    thumbs[7].click()  # end
    _after(browser, "walk-row", before)
    spherical = pixels(browser, "walk-row")
    assert spherical.shape == (29 + 1, 10 * 29 + 1, 3)
    tiles = [spherical[1:29, 1 + i * 29 : 29 + i * 29] for i in range(10)]
    assert np.abs(tiles[0].astype(int) - tiles[-1].astype(int)).mean() > 10  # it goes somewhere
    before = _updates(browser, "walk-row")
    browser.find_element(By.CSS_SELECTOR, 'input[name="method"][value="linear"]').click()
    _after(browser, "walk-row", before)
    linear = pixels(browser, "walk-row")
    assert not np.array_equal(linear, spherical)  # another path between the same ends
    np.testing.assert_allclose(linear[1:29, 1:29], spherical[1:29, 1:29], atol=2)  # same start


def _slide(browser: webdriver.Chrome, name: str, value: float) -> None:
    before = _updates(browser, "attributed")
    browser.execute_script(
        "const s = document.querySelector(`#sliders input[data-attribute='${arguments[0]}']`);"
        "s.value = String(arguments[1]); s.dispatchEvent(new Event('change'));",
        name,
        value,
    )
    _after(browser, "attributed", before)


def test_the_thickness_slider_thickens_the_strokes(browser: webdriver.Chrome, tmp_path: Path) -> None:
    names = [s.get_attribute("data-attribute") for s in browser.find_elements(By.CSS_SELECTOR, "#sliders input")]
    assert names == ["slant", "thickness"]
    _slide(browser, "thickness", 0)
    plain = pixels(browser, "attributed").astype(float)
    _slide(browser, "thickness", 3)
    thick = pixels(browser, "attributed").astype(float)
    _slide(browser, "thickness", -3)
    thin = pixels(browser, "attributed").astype(float)
    assert thin.mean() < plain.mean() < thick.mean()  # more ink, then less
    _slide(browser, "thickness", 0)
    _slide(browser, "slant", 3)
    assert np.abs(pixels(browser, "attributed").astype(float) - plain).mean() > 5
    _slide(browser, "slant", 0)


def test_the_colour_model_has_its_attribute_sliders(browser: webdriver.Chrome, tmp_path: Path) -> None:
    _choose(browser, "emoji")
    names = [s.get_attribute("data-attribute") for s in browser.find_elements(By.CSS_SELECTOR, "#sliders input")]
    assert "Glasses" in names and not any(n.startswith("class_") for n in names)
    plain = pixels(browser, "attributed").astype(float)
    assert plain.shape == (64, 64, 3)
    _slide(browser, "Glasses", 3)
    assert np.abs(pixels(browser, "attributed").astype(float) - plain).mean() > 3
    _screenshot(browser, "emoji", tmp_path)
    _choose(browser, "mnist")


def test_a_click_on_the_2d_latent_plane_decodes_that_point(browser: webdriver.Chrome, tmp_path: Path) -> None:
    assert not browser.find_element(By.ID, "plane-section").is_displayed()  # mnist: 32-D, no plane
    _choose(browser, "mnist2d")
    WebDriverWait(browser, WAIT_S).until(lambda d: _updates(d, "plane") > 0)
    assert browser.find_element(By.ID, "plane-section").is_displayed()
    plane = browser.find_element(By.ID, "plane-wrap")
    images = []
    for dx, dy in ((-110, -110), (110, 110)):
        before = _updates(browser, "plane-point")
        webdriver.ActionChains(browser).move_to_element_with_offset(plane, dx, dy).click().perform()
        _after(browser, "plane-point", before)
        images.append(pixels(browser, "plane-point").astype(float))
    assert "z = (" in browser.find_element(By.ID, "plane-coords").text
    assert np.abs(images[0] - images[1]).mean() > 10  # two far points of the plane, two different digits
    _screenshot(browser, "plane", tmp_path)
    _choose(browser, "mnist")


def test_a_dropped_png_shows_its_reconstruction_and_an_ood_flag(
    browser: webdriver.Chrome, server: ServerThread, tmp_path: Path
) -> None:
    from vae_client.client import VaeClient

    with VaeClient(server.address, "mnist") as vae:
        digit = vae.sample(1, temperature=0.5, seed=5, png=True).png[0]  # a digit as the model draws it
    (tmp_path / "digit.png").write_bytes(digit)
    noise = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(noise, mode="L").save(tmp_path / "noise.png")
    verdicts = {}
    for name in ("digit", "noise"):
        before = _updates(browser, "reconstruction")
        if name == "digit":  # chosen with the file picker
            browser.find_element(By.ID, "file").send_keys(str(tmp_path / f"{name}.png"))
        else:  # dropped: a drop event carrying the file, as a drag from the desktop delivers it
            _drop(browser, (tmp_path / f"{name}.png").read_bytes())
        _after(browser, "reconstruction", before)
        assert pixels(browser, "reconstruction").shape == (28, 28, 3)
        verdicts[name] = browser.find_element(By.ID, "score").text
    assert "in distribution" in verdicts["digit"] and "-log p(x) =" in verdicts["digit"]
    assert "out of distribution" in verdicts["noise"]
    _screenshot(browser, "score", tmp_path)


def _drop(browser: webdriver.Chrome, png: bytes) -> None:
    """Dispatch a drop event on the page's drop zone with `png` as its one file."""
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
           const transfer = new DataTransfer();
           transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
           const zone = document.getElementById('drop');
           zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true, cancelable: true}));
           zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
        base64.b64encode(png).decode(),
    )
