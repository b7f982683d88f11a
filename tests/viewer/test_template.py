"""The served page is a Panel template (``ViewerTemplate``), in real Chromium: its header bar,
and its Tabulator guard (``viewer/static/tabulator_guard.js``).

Tabulator builds a table on a timer after its constructor; before that ``setColumns`` throws
"Cannot read properties of null (reading 'firstChild')" and keeps the old columns, and
``redraw`` throws too. Panel's table view calls them when the model's columns or hidden columns
change, and the viewer changes those in a message that can land right after a table was
rendered (a page opened by its address, a tab switched to, a table re-rendered). The fresh clone
hit it on the template twice. These tests make that moment happen on purpose instead of waiting
for the machine to be slow enough; each fails without its part of the guard.
"""

from __future__ import annotations

from playwright.sync_api import expect
from test_browser import ALL_NAMES, open_viewer, rows
from viewer_support import screenshot

# A Tabulator made, given new columns and redrawn in the same task, before its build timer fires.
RAW_TABLE_JS = """() => new Promise((resolve) => {
  const el = document.createElement('div');
  document.body.appendChild(el);
  const table = new Tabulator(el, {columns: [{field: 'a', title: 'A'}], data: [{a: 1, b: 2}]});
  let error = null;
  try {
    table.setColumns([{field: 'b', title: 'B'}]);
    table.redraw(true);
  } catch (e) { error = String(e); }
  table.on('tableBuilt', () => {
    resolve({error, fields: table.getColumns().map((c) => c.getField()),
             header: el.querySelector('.tabulator-col-title').textContent});
    table.destroy();
    el.remove();
  });
})"""

# The runs table's own Panel view, rendered again (a new Tabulator, not yet built), and in the
# same task its name column retitled or hidden: what a message landing at that moment does.
PANEL_TABLE_JS = """(change) => new Promise((resolve) => {
  const views = [];
  const walk = (v) => { if (v.tabulator !== undefined) views.push(v); (v.child_views ?? []).forEach(walk); };
  Bokeh.index.roots.forEach(walk);
  const view = views.find((v) => v.model.columns.some((c) => c.field === 'run_id'));
  let error = null;
  try {
    view.invalidate_render();
    if (change === 'title') {
      view.model.columns = view.model.columns.map((c) => c.field === 'name' ? c.clone({title: 'Probe title'}) : c);
    } else {
      view.model.hidden_columns = [...view.model.hidden_columns, 'name'];
    }
  } catch (e) { error = String(e); }
  view.tabulator.on('tableBuilt', () => setTimeout(() => {
    const name = view.tabulator.getColumn('name');
    resolve({error, title: name.getDefinition().title, visible: name.isVisible(), rows: view.tabulator.getDataCount()});
  }, 0));
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
    assert page.evaluate("() => Tabulator.prototype.nxGuarded") is True
    assert page.evaluate("() => Bokeh.Models.get('panel.models.tabulator.DataTabulator')"
                         ".prototype.default_view.prototype.nxGuarded") is True
    assert page.evaluate(RAW_TABLE_JS) == {"error": None, "fields": ["b"], "header": "B"}
    assert page.watch.errors == []


def test_a_panel_table_recolumned_as_it_renders_again_shows_the_new_columns(page, viewer):
    open_viewer(page, viewer)
    expect(rows(page)).to_have_count(len(ALL_NAMES))
    result = page.evaluate(PANEL_TABLE_JS, "title")
    assert result == {"error": None, "title": "Probe title", "visible": True, "rows": len(ALL_NAMES)}
    expect(page.get_by_text("Probe title")).to_be_visible()
    expect(rows(page)).to_have_count(len(ALL_NAMES))  # the page still draws the table
    assert page.watch.errors == []


def test_a_panel_table_given_hidden_columns_as_it_renders_again_hides_them(page, viewer):
    open_viewer(page, viewer)
    expect(rows(page)).to_have_count(len(ALL_NAMES))
    result = page.evaluate(PANEL_TABLE_JS, "hidden")
    assert result == {"error": None, "title": "name", "visible": False, "rows": len(ALL_NAMES)}
    expect(rows(page)).to_have_count(len(ALL_NAMES))
    expect(rows(page).first.locator('[tabulator-field="name"]')).to_be_hidden()
    expect(rows(page).first.locator('[tabulator-field="run_id"]')).to_be_visible()
    assert page.watch.errors == []
