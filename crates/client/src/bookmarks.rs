//! The Netscape bookmark file (`bookmarks.html`, what every browser imports and exports)
//! and its mapping to Sync bookmark records (client-formats.md §6.2): folders carry the
//! ordered ids of their children; the roots have the fixed ids `menu`, `toolbar`,
//! `unfiled` and `mobile`.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use crate::sync::{new_sync_id, PushReport, SyncClient};
use crate::ClientError;

/// One entry of a bookmark tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Folder {
        title: String,
        /// Milliseconds since the epoch.
        added: Option<i64>,
        children: Vec<Item>,
    },
    Bookmark {
        title: String,
        url: String,
        added: Option<i64>,
        tags: Vec<String>,
        keyword: Option<String>,
        description: Option<String>,
    },
    Separator,
}

/// A whole bookmark collection, by root.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bookmarks {
    pub menu: Vec<Item>,
    pub toolbar: Vec<Item>,
    pub unfiled: Vec<Item>,
    pub mobile: Vec<Item>,
}

const ROOTS: [&str; 4] = ["menu", "toolbar", "unfiled", "mobile"];

impl Bookmarks {
    fn root(&self, id: &str) -> &Vec<Item> {
        match id {
            "menu" => &self.menu,
            "toolbar" => &self.toolbar,
            "unfiled" => &self.unfiled,
            _ => &self.mobile,
        }
    }

    fn root_mut(&mut self, id: &str) -> &mut Vec<Item> {
        match id {
            "menu" => &mut self.menu,
            "toolbar" => &mut self.toolbar,
            "unfiled" => &mut self.unfiled,
            _ => &mut self.mobile,
        }
    }

    /// Number of bookmarks, folders and separators.
    pub fn len(&self) -> usize {
        fn count(items: &[Item]) -> usize {
            items
                .iter()
                .map(|i| match i {
                    Item::Folder { children, .. } => 1 + count(children),
                    _ => 1,
                })
                .sum()
        }
        ROOTS.iter().map(|r| count(self.root(r))).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

enum Token {
    Tag {
        name: String,
        closing: bool,
        attrs: BTreeMap<String, String>,
    },
    Text(String),
}

fn tokenize(html: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map(|i| &after[i + 3..]).unwrap_or("");
            continue;
        }
        if rest.starts_with('<') {
            let end = tag_end(rest);
            out.push(parse_tag(&rest[1..end]));
            rest = rest.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            out.push(Token::Text(decode_entities(&rest[..end])));
            rest = &rest[end..];
        }
    }
    out
}

/// The index of the `>` closing the tag at the start of `s`, skipping quoted values.
fn tag_end(s: &str) -> usize {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return i,
            _ => {}
        }
    }
    s.len()
}

fn parse_tag(inner: &str) -> Token {
    let inner = inner.trim().trim_end_matches('/');
    let (closing, inner) = match inner.strip_prefix('/') {
        Some(i) => (true, i),
        None => (false, inner),
    };
    let name_end = inner.find(|c: char| c.is_whitespace()).unwrap_or(inner.len());
    let name = inner[..name_end].to_ascii_uppercase();
    let mut attrs = BTreeMap::new();
    let mut rest = inner[name_end..].trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(rest.len());
        let key = rest[..key_end].to_ascii_uppercase();
        rest = rest[key_end..].trim_start();
        let value = if let Some(r) = rest.strip_prefix('=') {
            let r = r.trim_start();
            let (v, after) = match r.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &r[1..];
                    let end = body.find(q).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let end = r.find(char::is_whitespace).unwrap_or(r.len());
                    (&r[..end], &r[end..])
                }
            };
            rest = after.trim_start();
            decode_entities(v)
        } else {
            String::new()
        };
        if !key.is_empty() {
            attrs.insert(key, value);
        }
    }
    Token::Tag { name, closing, attrs }
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where a level's items go when its `</DL>` closes.
enum Level {
    Top,
    Folder { title: String, added: Option<i64> },
    Root(&'static str),
}

/// Parses a bookmark file. Firefox's layout is understood: the top list is the menu, the
/// folders marked `PERSONAL_TOOLBAR_FOLDER` / `UNFILED_BOOKMARKS_FOLDER` are the toolbar
/// and "Other Bookmarks"; other browsers' files land in the same places. Unknown markup is
/// skipped; the parser never fails, so an odd file yields what could be read.
pub fn parse_html(html: &str) -> Bookmarks {
    let mut out = Bookmarks::default();
    let mut stack: Vec<(Level, Vec<Item>)> = Vec::new();
    let mut pending: Option<Level> = None;
    // What text is being collected for: (kind, attrs, text).
    let mut open: Option<(String, BTreeMap<String, String>, String)> = None;
    let mut description_for_last = false;
    let added = |attrs: &BTreeMap<String, String>| -> Option<i64> {
        attrs
            .get("ADD_DATE")
            .and_then(|d| d.trim().parse::<i64>().ok())
            .map(|s| s * 1000)
    };
    for token in tokenize(html) {
        match token {
            Token::Text(t) => {
                if let Some((_, _, text)) = &mut open {
                    text.push_str(&t);
                } else if description_for_last {
                    let d = t.trim();
                    if !d.is_empty() {
                        if let Some((_, items)) = stack.last_mut() {
                            if let Some(Item::Bookmark { description, .. }) = items.last_mut() {
                                *description = Some(d.to_string());
                            }
                        }
                    }
                }
            }
            Token::Tag { name, closing, attrs } => match (name.as_str(), closing) {
                ("H3" | "A", false) => {
                    open = Some((name, attrs, String::new()));
                    description_for_last = false;
                }
                ("H3", true) => {
                    if let Some((_, attrs, text)) = open.take() {
                        let title = text.trim().to_string();
                        pending = Some(if attrs.contains_key("PERSONAL_TOOLBAR_FOLDER") {
                            Level::Root("toolbar")
                        } else if attrs.contains_key("UNFILED_BOOKMARKS_FOLDER") {
                            Level::Root("unfiled")
                        } else {
                            Level::Folder {
                                title,
                                added: added(&attrs),
                            }
                        });
                    }
                }
                ("A", true) => {
                    if let Some((_, attrs, text)) = open.take() {
                        let url = attrs.get("HREF").cloned().unwrap_or_default();
                        let item = Item::Bookmark {
                            title: text.trim().to_string(),
                            url,
                            added: added(&attrs),
                            tags: attrs
                                .get("TAGS")
                                .map(|t| {
                                    t.split(',')
                                        .map(str::trim)
                                        .filter(|t| !t.is_empty())
                                        .map(str::to_string)
                                        .collect()
                                })
                                .unwrap_or_default(),
                            keyword: attrs.get("SHORTCUTURL").filter(|k| !k.is_empty()).cloned(),
                            description: None,
                        };
                        if let Some((_, items)) = stack.last_mut() {
                            items.push(item);
                        }
                    }
                }
                ("DD", false) => description_for_last = true,
                ("HR", false) => {
                    if let Some((_, items)) = stack.last_mut() {
                        items.push(Item::Separator);
                    }
                }
                ("DL", false) => {
                    let level = pending.take().unwrap_or(if stack.is_empty() {
                        Level::Top
                    } else {
                        Level::Folder {
                            title: String::new(),
                            added: None,
                        }
                    });
                    stack.push((level, Vec::new()));
                }
                ("DL", true) => {
                    if let Some((level, items)) = stack.pop() {
                        match level {
                            Level::Top => out.menu.extend(items),
                            Level::Root(r) => out.root_mut(r).extend(items),
                            Level::Folder { title, added } => {
                                let folder = Item::Folder {
                                    title,
                                    added,
                                    children: items,
                                };
                                match stack.last_mut() {
                                    Some((_, parent)) => parent.push(folder),
                                    None => out.menu.push(folder),
                                }
                            }
                        }
                    }
                }
                ("DT", false) => description_for_last = false,
                _ => {}
            },
        }
    }
    // A file cut short: keep what was read.
    while let Some((level, items)) = stack.pop() {
        match (level, stack.last_mut()) {
            (Level::Root(r), _) => out.root_mut(r).extend(items),
            (Level::Folder { title, added }, Some((_, parent))) => parent.push(Item::Folder {
                title,
                added,
                children: items,
            }),
            (Level::Folder { title, added }, None) => out.menu.push(Item::Folder {
                title,
                added,
                children: items,
            }),
            (Level::Top, _) => out.menu.extend(items),
        }
    }
    out
}

/// Writes a bookmark file in Firefox's layout.
pub fn to_html(b: &Bookmarks) -> String {
    fn items(out: &mut String, list: &[Item], depth: usize) {
        let pad = "    ".repeat(depth);
        for item in list {
            match item {
                Item::Folder { title, added, children } => {
                    out.push_str(&format!("{pad}<DT><H3{}>{}</H3>\n", date_attr(*added), escape(title)));
                    dl(out, children, depth);
                }
                Item::Bookmark {
                    title,
                    url,
                    added,
                    tags,
                    keyword,
                    description,
                } => {
                    out.push_str(&format!("{pad}<DT><A HREF=\"{}\"{}", escape(url), date_attr(*added)));
                    if !tags.is_empty() {
                        out.push_str(&format!(" TAGS=\"{}\"", escape(&tags.join(","))));
                    }
                    if let Some(k) = keyword {
                        out.push_str(&format!(" SHORTCUTURL=\"{}\"", escape(k)));
                    }
                    out.push_str(&format!(">{}</A>\n", escape(title)));
                    if let Some(d) = description {
                        out.push_str(&format!("{pad}<DD>{}\n", escape(d)));
                    }
                }
                Item::Separator => out.push_str(&format!("{pad}<HR>\n")),
            }
        }
    }
    fn dl(out: &mut String, list: &[Item], depth: usize) {
        let pad = "    ".repeat(depth);
        out.push_str(&format!("{pad}<DL><p>\n"));
        items(out, list, depth + 1);
        out.push_str(&format!("{pad}</DL><p>\n"));
    }
    fn date_attr(added: Option<i64>) -> String {
        added
            .map(|ms| format!(" ADD_DATE=\"{}\"", ms / 1000))
            .unwrap_or_default()
    }
    let mut out = String::from(
        "<!DOCTYPE NETSCAPE-Bookmark-file-1>\n<!-- This is an automatically generated file.\n     It will be read and overwritten.\n     DO NOT EDIT! -->\n<META HTTP-EQUIV=\"Content-Type\" CONTENT=\"text/html; charset=UTF-8\">\n<TITLE>Bookmarks</TITLE>\n<H1>Bookmarks Menu</H1>\n\n<DL><p>\n",
    );
    items(&mut out, &b.menu, 1);
    out.push_str("    <DT><H3 PERSONAL_TOOLBAR_FOLDER=\"true\">Bookmarks Toolbar</H3>\n");
    dl(&mut out, &b.toolbar, 1);
    out.push_str("    <DT><H3 UNFILED_BOOKMARKS_FOLDER=\"true\">Other Bookmarks</H3>\n");
    dl(&mut out, &b.unfiled, 1);
    if !b.mobile.is_empty() {
        out.push_str("    <DT><H3>Mobile Bookmarks</H3>\n");
        dl(&mut out, &b.mobile, 1);
    }
    out.push_str("</DL>\n");
    out
}

// ---------------------------------------------------------------------------------------
// Sync records

fn root_title(id: &str) -> &'static str {
    // The titles Firefox gives the roots in their records.
    match id {
        "menu" => "menu",
        "toolbar" => "toolbar",
        "unfiled" => "unfiled",
        _ => "mobile",
    }
}

/// The records for `b`, with fresh ids. `existing` is what the server holds: the roots
/// keep their children and gain the new ones after them.
pub fn to_records(b: &Bookmarks, existing: &[Value]) -> Vec<Value> {
    fn add(out: &mut Vec<Value>, list: &[Item], parent: &str, parent_name: &str) -> Vec<Value> {
        let mut ids = Vec::new();
        for (pos, item) in list.iter().enumerate() {
            let id = new_sync_id();
            let mut r = json!({"id": id, "parentid": parent, "parentName": parent_name});
            match item {
                Item::Folder { title, added, children } => {
                    r["type"] = json!("folder");
                    r["title"] = json!(title);
                    if let Some(a) = added {
                        r["dateAdded"] = json!(a);
                    }
                    let kids = add(out, children, &id, title);
                    r["children"] = Value::Array(kids);
                }
                Item::Bookmark {
                    title,
                    url,
                    added,
                    tags,
                    keyword,
                    description,
                } => {
                    r["type"] = json!(if url.starts_with("place:") { "query" } else { "bookmark" });
                    r["title"] = json!(title);
                    r["bmkUri"] = json!(url);
                    r["tags"] = json!(tags);
                    if let Some(a) = added {
                        r["dateAdded"] = json!(a);
                    }
                    if let Some(k) = keyword {
                        r["keyword"] = json!(k);
                    }
                    if let Some(d) = description {
                        r["description"] = json!(d);
                    }
                }
                Item::Separator => {
                    r["type"] = json!("separator");
                    r["pos"] = json!(pos);
                }
            }
            ids.push(json!(id));
            out.push(r);
        }
        ids
    }
    let mut out = Vec::new();
    for root in ROOTS {
        let list = b.root(root);
        if list.is_empty() {
            continue;
        }
        let mut root_record = existing
            .iter()
            .find(|r| r["id"] == root && r["deleted"] != true)
            .cloned()
            .unwrap_or_else(|| {
                json!({"id": root, "type": "folder", "parentid": "places", "parentName": "", "title": root_title(root), "children": []})
            });
        let new = add(&mut out, list, root, root_title(root));
        let mut children = root_record["children"].as_array().cloned().unwrap_or_default();
        children.extend(new);
        root_record["children"] = Value::Array(children);
        out.push(root_record);
    }
    out
}

/// The tree the records describe: each folder's children in the order of its `children`,
/// then any record naming the folder as parent that the list misses (sorted by id).
/// Tombstones, cycles and records outside the four roots are left out.
pub fn from_records(records: &[Value]) -> Bookmarks {
    let live: BTreeMap<&str, &Value> = records
        .iter()
        .filter(|r| r["deleted"] != true)
        .filter_map(|r| r["id"].as_str().map(|id| (id, r)))
        .collect();
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, r) in &live {
        if let Some(p) = r["parentid"].as_str() {
            by_parent.entry(p).or_default().push(id);
        }
    }
    fn build<'a>(
        folder: &'a str,
        live: &BTreeMap<&'a str, &'a Value>,
        by_parent: &BTreeMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
    ) -> Vec<Item> {
        let mut order: Vec<&str> = live
            .get(folder)
            .and_then(|r| r["children"].as_array())
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for orphan in by_parent.get(folder).into_iter().flatten() {
            if !order.contains(orphan) {
                order.push(orphan);
            }
        }
        let mut out = Vec::new();
        for id in order {
            let Some(r) = live.get(id) else { continue };
            if !seen.insert(id) {
                continue;
            }
            let s = |k: &str| r[k].as_str().map(str::to_string);
            let added = r["dateAdded"]
                .as_i64()
                .or_else(|| r["dateAdded"].as_str().and_then(|d| d.parse().ok()));
            match r["type"].as_str().unwrap_or_default() {
                "folder" | "livemark" => out.push(Item::Folder {
                    title: s("title").unwrap_or_default(),
                    added,
                    children: build(id, live, by_parent, seen),
                }),
                "bookmark" | "query" | "microsummary" => out.push(Item::Bookmark {
                    title: s("title").unwrap_or_default(),
                    url: s("bmkUri").unwrap_or_default(),
                    added,
                    tags: r["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect(),
                    keyword: s("keyword").filter(|k| !k.is_empty()),
                    description: s("description").filter(|d| !d.is_empty()),
                }),
                "separator" => out.push(Item::Separator),
                _ => {}
            }
        }
        out
    }
    let mut seen = HashSet::new();
    let mut out = Bookmarks::default();
    for root in ROOTS {
        seen.insert(root);
    }
    for root in ROOTS {
        *out.root_mut(root) = build(root, &live, &by_parent, &mut seen);
    }
    out
}

impl SyncClient {
    /// Adds the bookmarks of a bookmark file to the account, after what is there.
    pub async fn import_bookmarks(&mut self, html: &str, progress: &dyn Fn(usize)) -> Result<PushReport, ClientError> {
        let parsed = parse_html(html);
        if parsed.is_empty() {
            return Err(ClientError::Config("the file holds no bookmarks".into()));
        }
        let (existing, _) = self.pull("bookmarks", &|_| {}).await?;
        let records = to_records(&parsed, &existing);
        self.push("bookmarks", records, progress).await
    }

    /// The account's bookmarks as a bookmark file.
    pub async fn export_bookmarks(&mut self, progress: &dyn Fn(usize)) -> Result<(String, usize), ClientError> {
        let (records, _) = self.pull("bookmarks", progress).await?;
        let tree = from_records(&records);
        Ok((to_html(&tree), tree.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIREFOX: &str = r#"<!DOCTYPE NETSCAPE-Bookmark-file-1>
<!-- This is an automatically generated file.
     DO NOT EDIT! -->
<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=UTF-8">
<TITLE>Bookmarks</TITLE>
<H1>Bookmarks Menu</H1>
<DL><p>
    <DT><A HREF="https://www.mozilla.org/" ADD_DATE="1700000000" LAST_MODIFIED="1700000001" TAGS="web,moz" SHORTCUTURL="moz">Mozilla &amp; friends</A>
    <DD>The &lt;home&gt; of Firefox
    <HR>
    <DT><H3 ADD_DATE="1600000000">Projects</H3>
    <DL><p>
        <DT><A HREF="https://example.com/a?x=1&amp;y=2">A</A>
        <DT><H3>Deeper</H3>
        <DL><p>
            <DT><A HREF="place:sort=8&maxResults=10">Recent</A>
        </DL><p>
        <DT><H3>Empty</H3>
        <DL><p>
        </DL><p>
    </DL><p>
    <DT><H3 ADD_DATE="1" PERSONAL_TOOLBAR_FOLDER="true">Bookmarks Toolbar</H3>
    <DL><p>
        <DT><A HREF="https://news.example/">News</A>
    </DL><p>
    <DT><H3 UNFILED_BOOKMARKS_FOLDER="true">Other Bookmarks</H3>
    <DL><p>
        <DT><A HREF="https://other.example/">Ünïcode title</A>
    </DL><p>
</DL>
"#;

    #[test]
    fn parses_firefox_layout() {
        let b = parse_html(FIREFOX);
        assert_eq!(b.menu.len(), 3);
        match &b.menu[0] {
            Item::Bookmark {
                title,
                url,
                added,
                tags,
                keyword,
                description,
            } => {
                assert_eq!(title, "Mozilla & friends");
                assert_eq!(url, "https://www.mozilla.org/");
                assert_eq!(*added, Some(1_700_000_000_000));
                assert_eq!(tags, &["web", "moz"]);
                assert_eq!(keyword.as_deref(), Some("moz"));
                assert_eq!(description.as_deref(), Some("The <home> of Firefox"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.menu[1], Item::Separator);
        let Item::Folder { title, children, .. } = &b.menu[2] else {
            panic!()
        };
        assert_eq!(title, "Projects");
        assert_eq!(children.len(), 3);
        assert!(matches!(&children[0], Item::Bookmark { url, .. } if url == "https://example.com/a?x=1&y=2"));
        assert!(matches!(&children[2], Item::Folder { children, .. } if children.is_empty()));
        assert_eq!(b.toolbar.len(), 1);
        assert!(matches!(&b.unfiled[0], Item::Bookmark { title, .. } if title == "Ünïcode title"));
        assert_eq!(b.len(), 9);
    }

    #[test]
    fn html_round_trips() {
        let b = parse_html(FIREFOX);
        assert_eq!(parse_html(&to_html(&b)), b);
    }

    #[test]
    fn records_round_trip_with_order_and_nesting() {
        let b = parse_html(FIREFOX);
        let records = to_records(&b, &[]);
        // CF-002: every record has an id; roots point at places.
        assert!(records.iter().all(|r| r["id"].is_string()));
        let toolbar = records.iter().find(|r| r["id"] == "toolbar").unwrap();
        assert_eq!(toolbar["parentid"], "places");
        let query = records.iter().find(|r| r["title"] == "Recent").unwrap();
        assert_eq!(query["type"], "query");
        assert_eq!(from_records(&records), b);
        // Reversed record order changes nothing: the children lists decide.
        let mut rev = records.clone();
        rev.reverse();
        assert_eq!(from_records(&rev), b);
    }

    #[test]
    fn import_appends_after_existing_root_children() {
        let existing = vec![
            json!({"id": "toolbar", "type": "folder", "parentid": "places", "title": "toolbar", "children": ["old000000001"]}),
            json!({"id": "old000000001", "type": "bookmark", "parentid": "toolbar", "title": "Old", "bmkUri": "https://old.example/"}),
        ];
        let b = parse_html(FIREFOX);
        let mut records = to_records(&b, &existing);
        let toolbar = records.iter().find(|r| r["id"] == "toolbar").unwrap();
        assert_eq!(toolbar["children"][0], "old000000001");
        assert_eq!(toolbar["children"].as_array().unwrap().len(), 2);
        records.push(existing[1].clone());
        let tree = from_records(&records);
        assert!(matches!(&tree.toolbar[0], Item::Bookmark { title, .. } if title == "Old"));
    }

    #[test]
    fn odd_input_never_panics() {
        for s in [
            "",
            "<",
            "<DL>",
            "</DL></DL><A HREF=",
            "<DT><H3>x",
            "&#xffffffff; &#; &",
            "<A HREF='q'>t</A>",
        ] {
            let _ = parse_html(s);
        }
        let b = parse_html("<DL><DT><H3>Cut</H3><DL><DT><A HREF=\"u\">t</A>");
        assert!(matches!(&b.menu[0], Item::Folder { title, children, .. } if title == "Cut" && children.len() == 1));
    }
}
