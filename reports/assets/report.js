(function () {
  'use strict';
  var templateElement = document.getElementById('ps-template');  // absent on a page without figures (the index)
  var template = templateElement ? JSON.parse(templateElement.textContent) : null;
  var config = {displaylogo: false, responsive: true, showSendToCloud: false, showEditInChartStudio: false,
                showLink: false, plotlyServerURL: '', toImageButtonOptions: {format: 'png', scale: 2}};
  var plots = Array.prototype.slice.call(document.querySelectorAll('.ps-plot'));
  function render(div) {
    if (div.getAttribute('data-state')) return;
    div.setAttribute('data-state', 'rendering');
    var spec = JSON.parse(document.getElementById(div.getAttribute('data-spec')).textContent);
    spec.layout.template = template;
    Plotly.newPlot(div, spec.data, spec.layout, config).then(function () {
      div.setAttribute('data-state', 'rendered');
    }, function (err) {
      div.setAttribute('data-state', 'failed');
      div.textContent = 'This figure could not be drawn: ' + err;
    });
  }
  function unfold() {
    Array.prototype.forEach.call(document.querySelectorAll('details'), function (d) { d.open = true; });
  }
  if ('IntersectionObserver' in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { io.unobserve(e.target); render(e.target); } });
    }, {rootMargin: '800px 0px'});
    plots.forEach(function (p) { io.observe(p); });
  } else {
    unfold();
    plots.forEach(render);
  }
  window.plastiscopeReport = {
    plots: plots.length,
    renderAll: function () { unfold(); plots.forEach(render); },
    rendered: function () { return document.querySelectorAll('.ps-plot[data-state=rendered]').length; }
  };
  window.addEventListener('beforeprint', function () { unfold(); plots.forEach(render); });
  function openTarget() {  // a link to a folded section unfolds it
    var target = location.hash ? document.getElementById(decodeURIComponent(location.hash.slice(1))) : null;
    if (target && target.tagName === 'DETAILS') target.open = true;
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();

  function sortValue(cell) {
    var raw = cell.getAttribute('data-sort');
    if (raw === null) raw = cell.textContent;
    var num = raw.trim() === '' ? NaN : Number(raw);
    return {empty: raw.trim() === '', num: num, text: raw.toLowerCase()};
  }
  function compare(a, b) {
    if (a.empty || b.empty) return a.empty === b.empty ? 0 : (a.empty ? 1 : -1);
    var an = !isNaN(a.num), bn = !isNaN(b.num);
    if (an && bn) return a.num - b.num;
    if (an !== bn) return an ? -1 : 1;
    return a.text < b.text ? -1 : (a.text > b.text ? 1 : 0);
  }
  function sortTable(table, column, header) {
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    Array.prototype.forEach.call(header.parentNode.cells, function (th) { th.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
      return {row: row, key: sortValue(row.cells[column]), i: i};
    });
    rows.sort(function (x, y) {
      if (x.key.empty !== y.key.empty) return x.key.empty ? 1 : -1;  // empty cells last either way
      var c = compare(x.key, y.key);
      return (ascending ? c : -c) || x.i - y.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.ps-sortable'), function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      th.addEventListener('click', function () { sortTable(table, column, th); });
      th.addEventListener('keydown', function (e) {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortTable(table, column, th); }
      });
    });
  });
})();
