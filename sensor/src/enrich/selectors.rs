//! Discovery selectors: which discovered Python processes are watched, from the configuration's
//! `sensor.include` and `sensor.exclude` rules (executable, command line, container id,
//! Kubernetes namespace and pod label). Processes named with `--pid` are not subject to them.

use anyhow::{Context as _, Result};
use regex::Regex;

use super::{ProcessInfo, kubernetes::PodContainer};
use crate::config::{SelectorRules, Selectors};

/// Compiled rules of one side.
#[derive(Debug, Default)]
struct Rules {
    executables: Vec<String>,
    command_lines: Vec<Regex>,
    container_ids: Vec<String>,
    namespaces: Vec<String>,
    pod_labels: Vec<(String, String)>,
}

impl Rules {
    fn new(rules: &SelectorRules, side: &str) -> Result<Self> {
        let command_lines = rules
            .command_lines
            .iter()
            .map(|r| Regex::new(r).with_context(|| format!("sensor.{side}.command_lines: {r:?}")))
            .collect::<Result<_>>()?;
        Ok(Rules {
            executables: rules.executables.clone(),
            command_lines,
            container_ids: rules
                .container_ids
                .iter()
                .map(|id| id.to_ascii_lowercase())
                .collect(),
            namespaces: rules.namespaces.clone(),
            pod_labels: rules
                .pod_labels
                .iter()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }

    fn is_empty(&self) -> bool {
        self.executables.is_empty()
            && self.command_lines.is_empty()
            && self.container_ids.is_empty()
            && !self.uses_pods()
    }

    fn uses_pods(&self) -> bool {
        !self.namespaces.is_empty() || !self.pod_labels.is_empty()
    }

    fn matches(&self, info: &ProcessInfo, pod: Option<&PodContainer>) -> bool {
        let executable = self
            .executables
            .iter()
            .any(|e| *e == info.executable_name || *e == info.executable_path);
        executable
            || {
                let command_line = info.command_line();
                self.command_lines.iter().any(|r| r.is_match(&command_line))
            }
            || info.container_id.as_deref().is_some_and(|id| {
                self.container_ids
                    .iter()
                    .any(|p| id.starts_with(p.as_str()))
            })
            || pod.is_some_and(|pod| {
                let pod = &*pod.pod;
                self.namespaces.contains(&pod.namespace)
                    || self
                        .pod_labels
                        .iter()
                        .any(|(k, v)| pod.labels.get(k) == Some(v))
            })
    }
}

/// The compiled selectors.
#[derive(Debug, Default)]
pub struct Selector {
    include: Rules,
    exclude: Rules,
}

impl Selector {
    /// Compiles the configured rules (an invalid expression names its key).
    pub fn new(selectors: &Selectors) -> Result<Self> {
        Ok(Selector {
            include: Rules::new(&selectors.include, "include")?,
            exclude: Rules::new(&selectors.exclude, "exclude")?,
        })
    }

    /// Whether discovery may watch this process, in this pod (if any): it matches an include
    /// rule (or there is none) and no exclude rule. Without a pod, namespace and label rules
    /// match nothing.
    pub fn wants(&self, info: &ProcessInfo, pod: Option<&PodContainer>) -> bool {
        (self.include.is_empty() || self.include.matches(info, pod))
            && !self.exclude.matches(info, pod)
    }

    /// Whether a rule looks at the process's pod (namespace or label), so that the decision
    /// about a process in a container waits for its pod to be known.
    pub fn uses_pods(&self) -> bool {
        self.include.uses_pods() || self.exclude.uses_pods()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(exe: &str, argv: &[&str], container: Option<&str>) -> ProcessInfo {
        let mut info = ProcessInfo::new(
            7,
            exe.to_owned(),
            argv.iter().map(|s| s.to_string()).collect(),
            Default::default(),
        );
        info.container_id = container.map(str::to_owned);
        info
    }

    fn rules(executables: &[&str], command_lines: &[&str], ids: &[&str]) -> SelectorRules {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        SelectorRules {
            executables: owned(executables),
            command_lines: owned(command_lines),
            container_ids: owned(ids),
            ..SelectorRules::default()
        }
    }

    const ID: &str = "3f5e5c0b1d2a4e6f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f";

    impl Selector {
        /// [`Selector::wants`] for a process in no known pod.
        fn wants_alone(&self, info: &ProcessInfo) -> bool {
            self.wants(info, None)
        }
    }

    fn in_pod(namespace: &str, labels: &[(&str, &str)]) -> PodContainer {
        use super::super::kubernetes::PodMeta;
        PodContainer {
            pod: std::sync::Arc::new(PodMeta {
                uid: "u".into(),
                namespace: namespace.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..PodMeta::default()
            }),
            container_name: "app".into(),
        }
    }

    #[test]
    fn namespaces_and_pod_labels() {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let selector = Selector::new(&Selectors {
            include: SelectorRules {
                namespaces: owned(&["shop", "payments"]),
                pod_labels: owned(&["pysensor.io/capture=true"]),
                ..SelectorRules::default()
            },
            exclude: SelectorRules {
                pod_labels: owned(&["app.kubernetes.io/name=migrations", "tier="]),
                ..SelectorRules::default()
            },
        })
        .unwrap();
        assert!(selector.uses_pods());
        let web = process("/usr/bin/python3.11", &["python3", "web.py"], Some(ID));
        assert!(selector.wants(&web, Some(&in_pod("shop", &[]))));
        assert!(selector.wants(
            &web,
            Some(&in_pod("tools", &[("pysensor.io/capture", "true")]))
        ));
        assert!(!selector.wants(&web, Some(&in_pod("tools", &[]))));
        assert!(!selector.wants(
            &web,
            Some(&in_pod("shop", &[("app.kubernetes.io/name", "migrations")]))
        ));
        // An empty value is a value: `tier=` matches the label set to "".
        assert!(!selector.wants(&web, Some(&in_pod("shop", &[("tier", "")]))));
        assert!(selector.wants(&web, Some(&in_pod("shop", &[("tier", "web")]))));
        // No pod: namespace and label rules match nothing, so the include rules fail.
        assert!(!selector.wants(&web, None));
        let no_pods = Selector::new(&Selectors::default()).unwrap();
        assert!(!no_pods.uses_pods());
    }

    #[test]
    fn no_rules_watch_everything() {
        let selector = Selector::new(&Selectors::default()).unwrap();
        assert!(selector.wants_alone(&process("/usr/bin/python3.11", &["python3", "a.py"], None)));
    }

    #[test]
    fn include_by_executable_command_line_or_container() {
        let selector = Selector::new(&Selectors {
            include: rules(
                &["/opt/venv/bin/python3"],
                &[r"gunicorn .*\bapp:app"],
                &["3f5e5c0b1d2a"],
            ),
            exclude: SelectorRules::default(),
        })
        .unwrap();
        let gunicorn = process(
            "/usr/bin/python3.11",
            &[
                "/usr/bin/python3",
                "/venv/bin/gunicorn",
                "-w",
                "2",
                "app:app",
            ],
            None,
        );
        assert!(selector.wants_alone(&gunicorn));
        assert!(selector.wants_alone(&process(
            "/opt/venv/bin/python3",
            &["python3", "x.py"],
            None
        )));
        assert!(selector.wants_alone(&process(
            "/usr/bin/python3.11",
            &["python3", "x.py"],
            Some(ID)
        )));
        assert!(!selector.wants_alone(&process("/usr/bin/python3.11", &["python3", "x.py"], None)));
    }

    #[test]
    fn exclude_wins() {
        let selector = Selector::new(&Selectors {
            include: rules(&["python3.11"], &[], &[]),
            exclude: rules(&[], &["celery", "manage\\.py (shell|migrate)"], &[ID]),
        })
        .unwrap();
        assert!(selector.wants_alone(&process(
            "/usr/bin/python3.11",
            &["python3", "web.py"],
            None
        )));
        let celery = process(
            "/usr/bin/python3.11",
            &["python3", "-m", "celery", "worker"],
            None,
        );
        assert!(!selector.wants_alone(&celery));
        let migrate = process(
            "/usr/bin/python3.11",
            &["python3", "manage.py", "migrate"],
            None,
        );
        assert!(!selector.wants_alone(&migrate));
        assert!(!selector.wants_alone(&process(
            "/usr/bin/python3.11",
            &["python3", "a.py"],
            Some(ID)
        )));
    }

    #[test]
    fn invalid_expression_names_its_key() {
        let error = Selector::new(&Selectors {
            include: SelectorRules::default(),
            exclude: rules(&[], &["("], &[]),
        })
        .unwrap_err();
        assert!(format!("{error:#}").starts_with("sensor.exclude.command_lines: \"(\""));
    }
}
