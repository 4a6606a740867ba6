"""The contacts pages over HTTP: search results, a contact's page, its 404."""

from __future__ import annotations

from personatag.contacts import set_contact
from personatag.domain import PinKind
from personatag.memberships.pins import pin
from tests.web.conftest import Api
from tests.web.test_auth import login


def test_search_page_lists_hits_with_chips_and_says_what_to_do_when_empty(api: Api) -> None:
    set_contact(api.store, "c0007", {"first_name": "Ada", "last_name": "Lovelace", "firm": "AE"})
    pin(api.store, "emea", "c0007", PinKind.IN, actor="test")
    login(api.client, "viewer")
    page = api.client.get("/contacts", params={"q": "  ada "})
    assert page.status_code == 200
    assert 'data-contact="c0007"' in page.text and "Ada Lovelace" in page.text
    assert 'href="/personas/emea"' in page.text
    empty = api.client.get("/contacts", params={"q": "zzz"})
    assert "No contact has the id" in empty.text and 'href="/contacts?q=zz"' in empty.text
    first = api.client.get("/contacts")
    assert "Search for a contact" in first.text
    bad = api.client.get("/contacts", params={"q": "x", "offset": 99_999})
    assert bad.status_code == 422 and "offset: between 0 and 10,000" in bad.text


def test_contact_page_and_its_old_address_show_the_same(api: Api) -> None:
    pin(api.store, "emea", "c0003", PinKind.IN, actor="erin", reason="asked")
    login(api.client, "editor")
    new = api.client.get("/contacts/c0003")
    old = api.client.get("/contacts", params={"id": " c0003 "})
    for page in (new, old):
        assert page.status_code == 200
        assert 'id="contact-personas"' in page.text and 'id="contact-history"' in page.text
        assert "pinned in" in page.text and 'id="attr-form"' in page.text
        assert 'id="contact-reads"' in page.text


def test_viewer_sees_no_edit_or_pin_controls(api: Api) -> None:
    login(api.client, "viewer")
    page = api.client.get("/contacts/c0003")
    assert page.status_code == 200
    assert 'id="attr-form"' not in page.text and 'id="pin-persona"' not in page.text


def test_unknown_contact_is_a_404_page_that_says_so(api: Api) -> None:
    login(api.client, "viewer")
    for path in ("/contacts/nobody", "/contacts?id=nobody"):
        page = api.client.get(path)
        assert page.status_code == 404
        assert "There is no contact &#39;nobody&#39;" in page.text
