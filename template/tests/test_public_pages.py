"""The public pages: the landing page with its meta tags, robots.txt, sitemap.xml, the icon."""

import xml.etree.ElementTree as ET

from markupsafe import escape

from app import spec


def test_landing_page_says_what_the_product_is(client):
    page = client.get("/").get_data(as_text=True)
    landing = spec.LANDING
    headline = landing.get("headline") or spec.TAGLINE or spec.NAME
    assert f"<h1>{escape(headline)}</h1>" in page
    assert f"<title>{escape(headline)} · {escape(spec.NAME)}</title>" in page
    assert '<meta name="description" content="' in page
    assert f'<meta property="og:title" content="{escape(headline)}">' in page
    assert '<meta property="og:url" content="http://localhost/">' in page
    assert '<link rel="canonical" href="http://localhost/">' in page
    for point in landing.get("points") or ["import from CSV"]:
        assert str(escape(point)) in page
    if landing.get("price"):
        assert str(escape(landing["price"])) in page
    assert 'href="/signup"' in page and 'href="/static/favicon.svg"' in page


def test_canonical_links_use_the_base_url(app, client):
    app.config["BASE_URL"] = "https://app.example.com"
    page = client.get("/").get_data(as_text=True)
    assert '<link rel="canonical" href="https://app.example.com/">' in page
    assert "Sitemap: https://app.example.com/sitemap.xml" in client.get("/robots.txt").get_data(as_text=True)


def test_robots_txt_keeps_crawlers_from_the_mailed_links_only(client):
    response = client.get("/robots.txt")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "User-agent: *"
    assert [line for line in lines if line.startswith(("Allow", "Disallow"))] == [
        "Disallow: /verify/", "Disallow: /reset/", "Disallow: /invite/"]
    assert "Sitemap: http://localhost/sitemap.xml" in lines


def test_private_pages_send_crawlers_to_the_login(client):
    """What keeps the pages behind the login out of search results: the redirect."""
    response = client.get("/settings")
    assert response.status_code in (302, 303) and "/login" in response.headers["Location"]


def test_sitemap_lists_the_public_pages(client):
    response = client.get("/sitemap.xml")
    assert response.status_code == 200 and response.mimetype == "application/xml"
    root = ET.fromstring(response.data)
    ns = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    assert [loc.text for loc in root.findall("s:url/s:loc", ns)] == [
        "http://localhost/", "http://localhost/signup", "http://localhost/login"]


def test_the_icon_is_served(client):
    response = client.get("/static/favicon.svg")
    assert response.status_code == 200 and response.mimetype == "image/svg+xml"
    ET.fromstring(response.data)  # well-formed whatever the vertical's name


def test_phones_get_a_menu_and_cards(logged_in):
    page = logged_in.get("/").get_data(as_text=True)
    assert 'class="menu-toggle"' in page and '<label for="menu-toggle" class="menu-button">Menu</label>' in page
    css = logged_in.get("/static/style.css").get_data(as_text=True)
    assert "table.cards-on-phones" in css and ".menu-toggle:checked ~ ul.sections" in css
