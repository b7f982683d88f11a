// notebook_exp viewer: a guard for Tabulator calls made before a table is built.
//
// Tabulator (5 and 6) builds a table on a timer: its constructor ends with
// setTimeout(() => this._create()). Before that, setColumns throws "Cannot read
// properties of null (reading 'firstChild')" and keeps the old columns, and
// redraw throws "Cannot read properties of null (reading 'offsetWidth')" (the
// header element does not exist yet). Panel's table view calls setColumns when
// the model's `columns` change, and setHidden then redraw when its
// `hidden_columns` change; the viewer changes both (titles, formatters, a
// frame's columns, the sweep column) in messages that can land right after a
// table was rendered: a page opened by its address, a tab switched to, a table
// re-rendered for a new configuration. A throw there also stops the rest of
// that message's changes from reaching the page.
//
// So, before the build: setColumns stores the columns as the constructor's
// option, which the build reads, and redraw does nothing (the build draws);
// each marks the table. Once Panel's view has a marked table built, it applies
// the model's hidden columns again (its setHidden found no columns before the
// build) and redraws. After the build both are Tabulator's own.
//
// Loaded by the served template (notebook_exp_viewer.app.ViewerTemplate) after
// Panel's bundles; tests/viewer/test_template.py drives it in Chromium.
(function () {
  "use strict";

  function guardTabulator(Tabulator) {
    if (typeof Tabulator !== "function" || Tabulator.prototype.nxGuarded) {
      return;
    }
    const proto = Tabulator.prototype;
    const { setColumns, redraw } = proto;
    const early = (table) => !table.initialized && !table.destroyed && table.options != null;
    proto.setColumns = function (columns) {
      if (early(this)) {
        this.options.columns = columns;
        this.nxChangedEarly = true;
        return;
      }
      return setColumns.call(this, columns);
    };
    proto.redraw = function (force) {
      if (early(this)) {
        this.nxChangedEarly = true;
        return;
      }
      return redraw.call(this, force);
    };
    proto.nxGuarded = true;
  }

  function guardPanelView() {
    const model = window.Bokeh?.Models?.get?.("panel.models.tabulator.DataTabulator");
    const View = model?.prototype?.default_view;
    if (View == null || View.prototype.nxGuarded || typeof View.prototype.tableBuilt !== "function") {
      return;
    }
    const { tableBuilt } = View.prototype;
    View.prototype.tableBuilt = function () {
      tableBuilt.call(this);
      if (this.tabulator?.nxChangedEarly) {
        this.tabulator.nxChangedEarly = false;
        this.setHidden();
        this.tabulator.redraw(true);
      }
    };
    View.prototype.nxGuarded = true;
  }

  // Both bundles load before this script (the template lists it after them); the tests check
  // that both guards are in place.
  guardTabulator(window.Tabulator);
  guardPanelView();
})();
