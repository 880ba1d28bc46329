// Sortable tables: click a header to sort (first click puts the best first, by the metric's direction); the
// floor row stays on top. ``?sort=KEY&dir=asc|desc`` clicks that header on load (how the browser test drives it).
(function(){
function val(td){var v=td.getAttribute('data-v');if(v===null||v==='')return null;
 var n=Number(v);return isNaN(n)?v.toLowerCase():n;}
function sortBy(table,th,asc){var col=th.cellIndex,tb=table.querySelector('tbody.rows');
 var rows=Array.prototype.slice.call(tb.rows);
 rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
  if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  var c=x<y?-1:(x>y?1:0);return asc?c:-c;});
 rows.forEach(function(r){tb.appendChild(r);});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',asc?'ascending':'descending');}
var tables=document.querySelectorAll('table.sortable');
Array.prototype.forEach.call(tables,function(table){
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
  th.addEventListener('click',function(){var cur=th.getAttribute('aria-sort');
   var asc=cur?cur!=='ascending':th.getAttribute('data-hib')!=='1';sortBy(table,th,asc);});});});
var q=new URLSearchParams(window.location.search),key=q.get('sort'),dir=q.get('dir');
if(key){Array.prototype.forEach.call(tables,function(table){
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
  if(th.getAttribute('data-key')!==key)return;th.click();
  if(dir&&th.getAttribute('aria-sort')!==(dir==='asc'?'ascending':'descending'))th.click();});});}
})();
