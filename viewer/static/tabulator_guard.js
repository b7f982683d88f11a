// notebook_exp viewer: a guard for Tabulator's setColumns before the table is built.
//
// Tabulator (5 and 6) builds a table on a timer: its constructor ends with
// setTimeout(() => this._create()), and setColumns before that throws
// "Cannot read properties of null (reading 'firstChild')" (the header element
// does not exist yet) and leaves the old columns. Panel's Tabulator view calls
// setColumns whenever the model's `columns` change, and the viewer changes
// them (titles, formatters, a frame's columns) in a message that can land right
// after a table was rendered: a page opened by its address, a tab switched to,
// a table re-rendered for a new configuration.
//
// Before the build, the guard stores the columns as the constructor's option,
// which the build reads, so the table is built with the newest columns; after
// it, setColumns is Tabulator's own. Loaded by the served template
// (notebook_exp_viewer.app.ViewerTemplate) after Panel's Tabulator bundle;
// tests/viewer/test_template.py drives it in Chromium.
(function () {
  "use strict";

  function guard(Tabulator) {
    if (typeof Tabulator !== "function" || Tabulator.prototype.nxSetColumnsGuarded) {
      return;
    }
    const setColumns = Tabulator.prototype.setColumns;
    Tabulator.prototype.setColumns = function (columns) {
      if (!this.initialized && !this.destroyed && this.options) {
        this.options.columns = columns;
        return;
      }
      return setColumns.call(this, columns);
    };
    Tabulator.prototype.nxSetColumnsGuarded = true;
  }

  if (window.Tabulator !== undefined) {
    guard(window.Tabulator);
    return;
  }
  // Not loaded yet: guard it as soon as its bundle defines it.
  let defined;
  Object.defineProperty(window, "Tabulator", {
    configurable: true,
    enumerable: true,
    get() {
      return defined;
    },
    set(value) {
      defined = value;
      guard(value);
    },
  });
})();
