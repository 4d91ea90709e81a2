// The list pages' live search and filters (htmx): leave empty fields out of the
// request, so the address the browser shows keeps only the filters in use.
document.addEventListener("htmx:configRequest", (event) => {
  const parameters = event.detail.parameters;
  for (const [name, value] of Object.entries(parameters)) {
    if (value === "") delete parameters[name];
  }
});
