"""The served page is a Panel template (``ViewerTemplate``), in real Chromium: its header bar,
and its Tabulator guard (``viewer/static/tabulator_guard.js``).

Tabulator builds a table on a timer after its constructor; ``setColumns`` before that throws
"Cannot read properties of null (reading 'firstChild')" and keeps the old columns. Panel's
table view calls it whenever the model's columns change, and the viewer changes them in a
message that can land right after a table was rendered (a page opened by its address, a tab
switched to, a table re-rendered). The fresh clone hit it on the template twice. These tests
make that moment happen on purpose instead of waiting for the machine to be slow enough.
"""

from __future__ import annotations

from playwright.sync_api import expect
from test_browser import ALL_NAMES, open_viewer, rows
from viewer_support import screenshot

# A Tabulator made and given new columns in the same task, before its build timer fires.
RAW_TABLE_JS = """() => new Promise((resolve) => {
  const el = document.createElement('div');
  document.body.appendChild(el);
  const table = new Tabulator(el, {columns: [{field: 'a', title: 'A'}], data: [{a: 1, b: 2}]});
  let error = null;
  try { table.setColumns([{field: 'b', title: 'B'}]); } catch (e) { error = String(e); }
  table.on('tableBuilt', () => {
    resolve({error, fields: table.getColumns().map((c) => c.getField()),
             header: el.querySelector('.tabulator-col-title').textContent});
    table.destroy();
    el.remove();
  });
})"""

# The runs table's own Panel view, rendered again (a new Tabulator, not yet built) and its name
# column retitled in the same task: what a columns message landing at that moment does.
PANEL_TABLE_JS = """() => new Promise((resolve) => {
  const views = [];
  const walk = (v) => { if (v.tabulator !== undefined) views.push(v); (v.child_views ?? []).forEach(walk); };
  Bokeh.index.roots.forEach(walk);
  const view = views.find((v) => v.model.columns.some((c) => c.field === 'run_id'));
  const columns = view.model.columns.map((c) => c.field === 'name' ? c.clone({title: 'Probe title'}) : c);
  let error = null;
  try {
    view.invalidate_render();
    view.model.columns = columns;
  } catch (e) { error = String(e); }
  view.tabulator.on('tableBuilt', () => setTimeout(() => resolve({
    error,
    title: view.tabulator.getColumn('name').getDefinition().title,
    rows: view.tabulator.getDataCount(),
  }), 0));
})"""


def test_the_header_bar_names_the_store_and_counts_the_runs(page, viewer, browser_store):
    store, _ids = browser_store
    open_viewer(page, viewer)
    header = page.locator("#header")
    expect(header).to_be_visible()
    expect(header.locator(".nx-header")).to_contain_text(store.name)
    expect(header.locator(".nx-totals")).to_have_text(f"{len(ALL_NAMES)} runs")
    expect(page.locator(".title")).to_have_text("notebook_exp viewer")
    # the pages sit under the bar, the tabs their navigation
    expect(page.locator("#main .bk-tab")).to_have_text(["Runs", "Compare", "Run", "Sweeps", "Queue"])
    screenshot(page, "template-header")
    assert page.watch.external == []
    assert page.watch.errors == []


def test_a_table_given_columns_before_it_is_built_is_built_with_them(page, viewer):
    open_viewer(page, viewer)
    assert page.evaluate("() => Tabulator.prototype.nxSetColumnsGuarded") is True
    assert page.evaluate(RAW_TABLE_JS) == {"error": None, "fields": ["b"], "header": "B"}
    assert page.watch.errors == []


def test_a_panel_table_recolumned_as_it_renders_again_shows_the_new_columns(page, viewer):
    open_viewer(page, viewer)
    expect(rows(page)).to_have_count(len(ALL_NAMES))
    result = page.evaluate(PANEL_TABLE_JS)
    assert result == {"error": None, "title": "Probe title", "rows": len(ALL_NAMES)}
    expect(page.get_by_text("Probe title")).to_be_visible()
    expect(rows(page)).to_have_count(len(ALL_NAMES))  # the page still draws the table
    assert page.watch.errors == []
