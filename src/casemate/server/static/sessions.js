// Asks before a session is dropped: its client is cut off and its open transaction
// rolled back. Listens on the document, so rows the live refresh replaces keep it.
"use strict";
document.addEventListener("submit", (e) => {
  const text = e.target.dataset && e.target.dataset.confirm;
  if (text && !window.confirm(text)) e.preventDefault();
});
