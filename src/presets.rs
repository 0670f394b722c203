//! Cloud endpoint presets: `cloud`, `workspaces`, `presets` and `regions` expand to the host
//! patterns the Azure agents need, so nobody has to type them (the old gateway's "automatically
//! downloaded allowed hosts").
//!
//! Each entry cites the Microsoft documentation it comes from. Placeholders are filled from the
//! configuration: `<workspace-id>` once per workspace, `<region>` once per region; with no
//! workspaces (or no regions) the entry becomes the wildcard over that label
//! (`*.ods.opinsights.azure.com`), which is what the default allowlist does. The cloud picks the
//! suffixes: Azure public `.com`/`.net`, Azure Government `.us`/`usgovcloudapi.net`, Azure operated
//! by 21Vianet `.cn`/`chinacloudapi.cn`.
//!
//! Some endpoints need ports other than 443: a preset entry may then carry its own ports, in
//! the syntax of `allowed_hosts` (`*.cloudapp.net:443,9354,30000-30199`); an entry without ports
//! uses `allowed_ports`.
//!
//! Pure: parsing and expansion only; `config` validates the keys and [`expand`] runs once per
//! load, so the policy sees plain [`HostEntry`] values, the same type as `allowed_hosts`.

use std::fmt;

use crate::policy::HostEntry;

/// Most workspaces a gateway may serve: the Azure Monitor agent multihomes to up to ten.
pub const MAX_WORKSPACES: usize = 10;

/// `cloud:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cloud {
    #[default]
    Public,
    UsGov,
    China,
}

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Public, Cloud::UsGov, Cloud::China];

    pub fn parse(s: &str) -> Option<Cloud> {
        match s.trim().to_ascii_lowercase().as_str() {
            "public" | "azurecloud" => Some(Cloud::Public),
            "usgov" | "azureusgovernment" => Some(Cloud::UsGov),
            "china" | "azurechinacloud" => Some(Cloud::China),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Public => "public",
            Cloud::UsGov => "usgov",
            Cloud::China => "china",
        }
    }

    /// The Azure Monitor suffix: `azure.com`, `azure.us`, `azure.cn`.
    fn azure(self) -> &'static str {
        match self {
            Cloud::Public => "azure.com",
            Cloud::UsGov => "azure.us",
            Cloud::China => "azure.cn",
        }
    }

    /// Azure Storage blob suffix.
    fn blob(self) -> &'static str {
        match self {
            Cloud::Public => "blob.core.windows.net",
            Cloud::UsGov => "blob.core.usgovcloudapi.net",
            Cloud::China => "blob.core.chinacloudapi.cn",
        }
    }

    /// Azure Automation suffix.
    fn automation(self) -> &'static str {
        match self {
            Cloud::Public => "azure-automation.net",
            Cloud::UsGov => "azure-automation.us",
            Cloud::China => "azure-automation.cn",
        }
    }

    /// Azure Resource Manager.
    fn arm(self) -> &'static str {
        match self {
            Cloud::Public => "management.azure.com",
            Cloud::UsGov => "management.usgovcloudapi.net",
            Cloud::China => "management.chinacloudapi.cn",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `presets:` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Preset {
    AzureMonitorAgent,
    LogAnalyticsAgent,
    AutomationHybridWorker,
    AzureArcConnectedMachine,
    /// System Center Operations Manager management servers and consoles integrated with Log
    /// Analytics (the 2016 and 2018 gateway documents).
    OperationsManager,
}

impl Preset {
    pub const ALL: [Preset; 5] = [
        Preset::AzureMonitorAgent,
        Preset::LogAnalyticsAgent,
        Preset::AutomationHybridWorker,
        Preset::AzureArcConnectedMachine,
        Preset::OperationsManager,
    ];

    pub fn parse(s: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.as_str() == s.trim())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::AzureMonitorAgent => "azure-monitor-agent",
            Preset::LogAnalyticsAgent => "log-analytics-agent",
            Preset::AutomationHybridWorker => "automation-hybrid-worker",
            Preset::AzureArcConnectedMachine => "azure-arc-connected-machine",
            Preset::OperationsManager => "operations-manager",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Log Analytics workspace ID: a GUID, stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// `8-4-4-4-12` hexadecimal digits (case-insensitive, no braces).
    pub fn parse(s: &str) -> Option<WorkspaceId> {
        let s = s.trim();
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        let ok = groups.len() == 5
            && groups
                .iter()
                .zip(lens)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        ok.then(|| WorkspaceId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Azure region's programmatic name (`westeurope`, `eastus2`): lowercase letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Region(String);

impl Region {
    pub fn parse(s: &str) -> Option<Region> {
        let s = s.trim().to_ascii_lowercase();
        let ok = (2..=40).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        ok.then_some(Region(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The short code Azure Automation's per-region DNS records use, where documented.
    fn automation_code(&self) -> Option<&'static str> {
        AUTOMATION_REGION_CODES
            .iter()
            .find(|(r, _)| *r == self.0)
            .map(|(_, c)| *c)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Region codes of the legacy Automation records
/// `<code>-jobruntimedata-prod-su1.azure-automation.net` and
/// `<code>-agentservice-prod-1.azure-automation.net`.
///
/// Source: MicrosoftDocs/azure-docs `articles/automation/how-to/automation-region-dns-records.md`
/// (codes ac, ae, ase, cc, cid, eus2, jpe, ne, scus, sea, uks, wcus, we, wus2) and the gateway
/// article's example `ncus-agentservice-prod-1.azure-automation.net`
/// (<https://learn.microsoft.com/azure/azure-monitor/agents/gateway>).
const AUTOMATION_REGION_CODES: [(&str, &str); 15] = [
    ("australiacentral", "ac"),
    ("australiaeast", "ae"),
    ("australiasoutheast", "ase"),
    ("canadacentral", "cc"),
    ("centralindia", "cid"),
    ("eastus2", "eus2"),
    ("japaneast", "jpe"),
    ("northeurope", "ne"),
    ("southcentralus", "scus"),
    ("southeastasia", "sea"),
    ("uksouth", "uks"),
    ("westcentralus", "wcus"),
    ("westeurope", "we"),
    ("westus2", "wus2"),
    ("northcentralus", "ncus"),
];

/// One expanded allowlist entry and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetHost {
    /// A host pattern (`exact.name` or `*.suffix`), with its own ports when the source
    /// names ports other than 443.
    pub entry: HostEntry,
    /// The preset that asked for it.
    pub preset: Preset,
    /// What it is for, and the source document.
    pub why: &'static str,
}

impl PresetHost {
    /// `preset azure-monitor-agent`, or `preset azure-monitor-agent, workspace <id>` for an
    /// entry made from a workspace ID — how `allowed-host list` marks it.
    pub fn origin(&self) -> String {
        let pattern = self.entry.pattern().to_string();
        let workspace = pattern.split('.').next().and_then(WorkspaceId::parse);
        match workspace {
            Some(w) => format!("preset {}, workspace {w}", self.preset),
            None => format!("preset {}", self.preset),
        }
    }
}

// Sources, cited per entry below (every `why` names its document):
// - AMA: "Azure Monitor agent network configuration", MicrosoftDocs/azure-monitor-docs
//   articles/azure-monitor/agents/azure-monitor-agent-network-configuration.md (Azure Firewall
//   endpoints, suffix table), and the gateway article, gateway.md
//   (<https://learn.microsoft.com/azure/azure-monitor/agents/gateway>).
// - Log Analytics agent: MicrosoftDocs/azure-monitor-docs articles/azure-monitor/agents/
//   log-analytics-agent.md (Firewall requirements) and MicrosoftDocs/azure-docs
//   articles/automation/automation-network-configuration.md (Public vs Government table).
// - Automation: MicrosoftDocs/azure-docs articles/automation/automation-network-configuration.md
//   and articles/automation/how-to/automation-region-dns-records.md.
// - Arc: MicrosoftDocs/azure-docs articles/azure-arc/servers/includes/network-requirements.md.
// - Operations Manager and the Hybrid Runbook Worker's `*.cloudapp.net` ports: "Configure proxy
//   and firewall settings in Log Analytics" (2016), azure-docs
//   articles/log-analytics/log-analytics-proxy-firewall.md, kept in
//   ../shared/reference/proxy-firewall-settings.md (tables "Management server resource", "OMS
//   and Operations Manager console resource", "Agent resource", section "Azure Automation
//   Hybrid Runbook Worker"); and "Connect computers using the OMS Gateway" (2018),
//   log-analytics-oms-gateway.md, kept in ../shared/reference/oms-gateway-2018.md (Operations
//   Manager 2012 SP1 UR7 to 1801 management groups through the gateway).

/// Expand `presets` for `cloud`, filling `<workspace-id>` and `<region>` from `workspaces` and
/// `regions`. The result has no duplicate entries (first occurrence wins) and keeps preset
/// order; the same pattern may appear with different ports (the policy unites them).
pub fn expand(
    cloud: Cloud,
    presets: &[Preset],
    workspaces: &[WorkspaceId],
    regions: &[Region],
) -> Vec<PresetHost> {
    expand_checked(cloud, presets, workspaces, regions).0
}

/// [`expand`], plus the entries that did not parse (none: a unit test proves it for every
/// cloud and preset).
fn expand_checked(
    cloud: Cloud,
    presets: &[Preset],
    workspaces: &[WorkspaceId],
    regions: &[Region],
) -> (Vec<PresetHost>, Vec<String>) {
    let mut out: Vec<PresetHost> = Vec::new();
    let mut rejected: Vec<String> = Vec::new();
    for &preset in presets {
        let mut add = |text: String, why: &'static str| {
            let Ok(entry) = HostEntry::parse(&text) else {
                rejected.push(text);
                return;
            };
            if !out.iter().any(|h| h.entry == entry) {
                out.push(PresetHost { entry, preset, why });
            }
        };
        let per_ws = |label: &str| -> Vec<String> {
            if workspaces.is_empty() {
                vec![format!("*.{label}")]
            } else {
                workspaces.iter().map(|w| format!("{w}.{label}")).collect()
            }
        };
        let per_region = |label: &str| -> Vec<String> {
            if regions.is_empty() {
                vec![format!("*.{label}")]
            } else {
                regions.iter().map(|r| format!("{r}.{label}")).collect()
            }
        };
        let az = cloud.azure();
        match preset {
            Preset::AzureMonitorAgent => {
                // AMA_DOC, "Azure Firewall endpoints": control service (always).
                add(
                    format!("global.handler.control.monitor.{az}"),
                    "AMA control service; source: azure-monitor-agent-network-configuration.md",
                );
                // AMA_DOC: `<vm-region>.handler.control.monitor.azure.com`, fetch DCRs (always);
                // gateway.md: Add-OMSGatewayAllowedHost <gateway-server-region-name>.handler...
                for h in per_region(&format!("handler.control.monitor.{az}")) {
                    add(h, "AMA data collection rules, per region; source: azure-monitor-agent-network-configuration.md, gateway.md");
                }
                // AMA_DOC: `<workspace-id>.ods.opinsights.azure.com`, log ingestion (always);
                // gateway.md: Add-OMSGatewayAllowedHost <log-analytics-workspace-id>.ods...
                for h in per_ws(&format!("ods.opinsights.{az}")) {
                    add(h, "Log Analytics ingestion, per workspace; source: azure-monitor-agent-network-configuration.md, gateway.md");
                }
                // AMA_DOC: `<dce>.<vm-region>.ingest.monitor.azure.com`, custom logs through data
                // collection endpoints (DCE names are not known in advance: wildcard).
                add(
                    format!("*.ingest.monitor.{az}"),
                    "data collection endpoints (custom logs); source: azure-monitor-agent-network-configuration.md",
                );
                // AMA_DOC: `management.azure.com` and `<vm-region>.monitoring.azure.com`, custom
                // metrics only.
                add(
                    cloud.arm().to_owned(),
                    "custom metrics (Azure Resource Manager); source: azure-monitor-agent-network-configuration.md",
                );
                for h in per_region(&format!("monitoring.{az}")) {
                    add(h, "custom metrics, per region; source: azure-monitor-agent-network-configuration.md");
                }
            }
            Preset::LogAnalyticsAgent => {
                // LA_DOC, "Firewall requirements" (Public vs Government table; 21Vianet rows from
                // the container-insights firewall tables).
                for h in per_ws(&format!("ods.opinsights.{az}")) {
                    add(h, "Log Analytics ingestion; source: log-analytics-agent.md");
                }
                for h in per_ws(&format!("oms.opinsights.{az}")) {
                    add(
                        h,
                        "Log Analytics agent communication; source: log-analytics-agent.md",
                    );
                }
                add(
                    format!("*.{}", cloud.blob()),
                    "Azure Storage for the agent; source: log-analytics-agent.md",
                );
                add(
                    format!("*.{}", cloud.automation()),
                    "Azure Automation (Update Management, Change Tracking); source: log-analytics-agent.md, automation-network-configuration.md",
                );
            }
            Preset::AutomationHybridWorker => {
                // AUTO_DOC: global `*.azure-automation.net` (Gov `*.azure-automation.us`).
                add(
                    format!("*.{}", cloud.automation()),
                    "Azure Automation; source: automation-network-configuration.md",
                );
                // AUTO_DOC: agent service `<workspaceId>.agentsvc.azure-automation.net`.
                for h in per_ws(&format!("agentsvc.{}", cloud.automation())) {
                    add(h, "Automation agent service, per workspace; source: automation-network-configuration.md");
                }
                // PROXY_2016, "Azure Automation Hybrid Runbook Worker": outbound to
                // `*.cloudapp.net` on 443, 9354 and 30000-30199 (Azure public cloud).
                if cloud == Cloud::Public {
                    add(
                        "*.cloudapp.net:443,9354,30000-30199".into(),
                        "Hybrid Runbook Worker (ports 443, 9354, 30000-30199); source: proxy-firewall-settings.md (2016), section Azure Automation Hybrid Runbook Worker",
                    );
                }
                // AUTO_DOC region DNS records (legacy, still functional) and the gateway
                // article's examples we-jobruntimedata-prod-su1 / ncus-agentservice-prod-1.
                if cloud == Cloud::Public {
                    for r in regions {
                        if let Some(code) = r.automation_code() {
                            add(
                                format!("{code}-jobruntimedata-prod-su1.azure-automation.net"),
                                "Automation job runtime data, per region; source: automation-region-dns-records.md, gateway.md",
                            );
                            add(
                                format!("{code}-agentservice-prod-1.azure-automation.net"),
                                "Automation agent service, per region; source: automation-region-dns-records.md, gateway.md",
                            );
                        } else if r.as_str() == "switzerlandnorth" {
                            add(
                                "stzn-jobruntimedata-prod-su1.azure-automation.net".into(),
                                "Automation job runtime data (Switzerland North); source: automation-region-dns-records.md",
                            );
                            add(
                                "stzn-agentservice-prod-su1.azure-automation.net".into(),
                                "Automation agent service (Switzerland North, note -su1); source: automation-region-dns-records.md",
                            );
                        }
                    }
                }
            }
            Preset::AzureArcConnectedMachine => {
                // ARC_DOC. Note: Microsoft states Arc-enabled servers do not support the Log
                // Analytics gateway as a proxy; this preset is offered for splicegate, not for
                // the old gateway. `azgn*.servicebus.windows.net` (a mid-label wildcard) is
                // covered by `*.servicebus.windows.net`.
                let (login, servicebus, arc_suffix): (&[&str], bool, &str) = match cloud {
                    Cloud::Public => (
                        &[
                            "login.windows.net",
                            "login.microsoftonline.com",
                            "pas.windows.net",
                        ],
                        true,
                        "azure.com",
                    ),
                    Cloud::UsGov => (&["login.microsoftonline.us"], false, "azure.us"),
                    Cloud::China => (&["login.chinacloudapi.cn"], false, "azure.cn"),
                };
                for h in ["aka.ms", "download.microsoft.com", "packages.microsoft.com"] {
                    add(
                        h.into(),
                        "Arc agent download and install; source: network-requirements.md",
                    );
                }
                for h in login {
                    add(
                        (*h).into(),
                        "Microsoft Entra ID sign-in; source: network-requirements.md",
                    );
                }
                add(
                    cloud.arm().into(),
                    "Azure Resource Manager; source: network-requirements.md",
                );
                add(
                    format!("*.his.arc.{arc_suffix}"),
                    "Arc hybrid identity service; source: network-requirements.md",
                );
                add(
                    format!("*.guestconfiguration.{arc_suffix}"),
                    "Arc guest configuration and extensions; source: network-requirements.md",
                );
                if servicebus {
                    add(
                        "guestnotificationservice.azure.com".into(),
                        "Arc notification service; source: network-requirements.md",
                    );
                    add(
                        "*.guestnotificationservice.azure.com".into(),
                        "Arc notification service; source: network-requirements.md",
                    );
                }
                if servicebus {
                    add(
                        "*.servicebus.windows.net".into(),
                        "Arc notifications (azgn*), SSH and Windows Admin Center; source: network-requirements.md",
                    );
                    add(
                        "*.waconazure.com".into(),
                        "Windows Admin Center; source: network-requirements.md",
                    );
                    add(
                        "dc.services.visualstudio.com".into(),
                        "agent telemetry (optional); source: network-requirements.md",
                    );
                }
                add(
                    format!("*.{}", cloud.blob()),
                    "extension downloads; source: network-requirements.md",
                );
            }
            Preset::OperationsManager => {
                // PROXY_2016, "Management server resource" table (all port 443) and "Agent
                // resource" table; oms-gateway-2018.md: management groups send their data
                // through the gateway. Port 443 = the global allowed_ports (default [443]).
                add(
                    format!("*.ods.opinsights.{az}"),
                    "management server and agents, Log Analytics ingestion (443); source: proxy-firewall-settings.md (2016), management server and agent tables",
                );
                add(
                    format!("*.oms.opinsights.{az}"),
                    "agents (443); source: proxy-firewall-settings.md (2016), agent table",
                );
                add(
                    format!("*.{}", cloud.blob()),
                    "management server and agents, Azure Storage (443); source: proxy-firewall-settings.md (2016), management server and agent tables",
                );
                // The Advisor and Access Control endpoints exist in the public cloud only.
                if cloud == Cloud::Public {
                    for h in [
                        "service.systemcenteradvisor.com",
                        "data.systemcenteradvisor.com",
                        "scadvisor.accesscontrol.windows.net",
                        "scadvisorservice.accesscontrol.windows.net",
                    ] {
                        add(
                            h.into(),
                            "management server (443); source: proxy-firewall-settings.md (2016), management server table",
                        );
                    }
                    // Listed on 443 for the management server and on 80 and 443 for the
                    // consoles: one entry with both.
                    add(
                        "*.systemcenteradvisor.com:80,443".into(),
                        "management server (443) and Operations Manager console (80, 443); source: proxy-firewall-settings.md (2016), management server and console tables",
                    );
                    for h in ["*.live.com", "*.microsoftonline.com", "login.windows.net"] {
                        add(
                            format!("{h}:80,443"),
                            "OMS and Operations Manager console (80, 443); source: proxy-firewall-settings.md (2016), console table",
                        );
                    }
                }
            }
        }
    }
    (out, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str = "1D2C3B4A-0000-4000-8000-00000000ABCD";

    fn patterns(v: &[PresetHost]) -> Vec<String> {
        v.iter().map(|h| h.entry.to_string()).collect()
    }

    #[test]
    fn parsing() {
        assert_eq!(Cloud::parse("usgov"), Some(Cloud::UsGov));
        assert_eq!(Cloud::parse("mars"), None);
        assert_eq!(
            Preset::parse("log-analytics-agent"),
            Some(Preset::LogAnalyticsAgent)
        );
        assert_eq!(Preset::parse("ama"), None);
        assert_eq!(
            WorkspaceId::parse(WS).unwrap().as_str(),
            "1d2c3b4a-0000-4000-8000-00000000abcd"
        );
        for bad in [
            "",
            "1d2c3b4a00004000800000000000abcd",
            "{1d2c3b4a-0000-4000-8000-00000000abcd}",
            "1d2c3b4a-0000-4000-8000-00000000abcg",
        ] {
            assert!(WorkspaceId::parse(bad).is_none(), "{bad}");
        }
        assert!(Region::parse("westeurope").is_some());
        assert!(Region::parse("west europe").is_none());
        assert!(Region::parse("2x").is_none());
    }

    #[test]
    fn ama_public_with_workspace_and_region() {
        let ws = [WorkspaceId::parse(WS).unwrap()];
        let rg = [Region::parse("westeurope").unwrap()];
        let v = expand(Cloud::Public, &[Preset::AzureMonitorAgent], &ws, &rg);
        assert_eq!(
            patterns(&v),
            [
                "global.handler.control.monitor.azure.com",
                "westeurope.handler.control.monitor.azure.com",
                "1d2c3b4a-0000-4000-8000-00000000abcd.ods.opinsights.azure.com",
                "*.ingest.monitor.azure.com",
                "management.azure.com",
                "westeurope.monitoring.azure.com",
            ]
        );
        assert!(v.iter().all(|h| h.why.contains("source:")));
        assert_eq!(v[0].origin(), "preset azure-monitor-agent");
        assert_eq!(
            v[2].origin(),
            "preset azure-monitor-agent, workspace 1d2c3b4a-0000-4000-8000-00000000abcd"
        );
    }

    #[test]
    fn ama_sovereign_suffixes_and_wildcards_without_placeholders() {
        let v = expand(Cloud::UsGov, &[Preset::AzureMonitorAgent], &[], &[]);
        assert_eq!(
            patterns(&v),
            [
                "global.handler.control.monitor.azure.us",
                "*.handler.control.monitor.azure.us",
                "*.ods.opinsights.azure.us",
                "*.ingest.monitor.azure.us",
                "management.usgovcloudapi.net",
                "*.monitoring.azure.us",
            ]
        );
        let v = expand(Cloud::China, &[Preset::AzureMonitorAgent], &[], &[]);
        assert!(patterns(&v)
            .iter()
            .any(|p| p == "global.handler.control.monitor.azure.cn"));
        assert!(patterns(&v)
            .iter()
            .any(|p| p == "*.ods.opinsights.azure.cn"));
    }

    #[test]
    fn log_analytics_agent_matches_the_reference_table() {
        let table = [
            (
                Cloud::Public,
                [
                    "*.ods.opinsights.azure.com",
                    "*.oms.opinsights.azure.com",
                    "*.blob.core.windows.net",
                    "*.azure-automation.net",
                ],
            ),
            (
                Cloud::UsGov,
                [
                    "*.ods.opinsights.azure.us",
                    "*.oms.opinsights.azure.us",
                    "*.blob.core.usgovcloudapi.net",
                    "*.azure-automation.us",
                ],
            ),
            (
                Cloud::China,
                [
                    "*.ods.opinsights.azure.cn",
                    "*.oms.opinsights.azure.cn",
                    "*.blob.core.chinacloudapi.cn",
                    "*.azure-automation.cn",
                ],
            ),
        ];
        for (cloud, want) in table {
            let v = expand(cloud, &[Preset::LogAnalyticsAgent], &[], &[]);
            assert_eq!(patterns(&v), want, "{cloud}");
        }
    }

    #[test]
    fn automation_reproduces_the_gateway_examples() {
        let rg = [
            Region::parse("westeurope").unwrap(),
            Region::parse("northcentralus").unwrap(),
            Region::parse("switzerlandnorth").unwrap(),
        ];
        let ws = [WorkspaceId::parse(WS).unwrap()];
        let v = expand(Cloud::Public, &[Preset::AutomationHybridWorker], &ws, &rg);
        let p = patterns(&v);
        for want in [
            "*.azure-automation.net",
            "1d2c3b4a-0000-4000-8000-00000000abcd.agentsvc.azure-automation.net",
            "we-jobruntimedata-prod-su1.azure-automation.net",
            "ncus-agentservice-prod-1.azure-automation.net",
            "stzn-agentservice-prod-su1.azure-automation.net",
            "*.cloudapp.net:443,9354,30000-30199",
        ] {
            assert!(p.iter().any(|h| h == want), "{want} missing from {p:?}");
        }
        let worker = v
            .iter()
            .find(|h| h.entry.pattern().to_string() == "*.cloudapp.net")
            .map(|h| h.why);
        assert!(
            worker.is_some_and(|w| w.contains("source: proxy-firewall-settings.md")),
            "{worker:?}"
        );
        let v = expand(Cloud::UsGov, &[Preset::AutomationHybridWorker], &[], &rg);
        assert_eq!(
            patterns(&v),
            ["*.azure-automation.us", "*.agentsvc.azure-automation.us"]
        );
    }

    #[test]
    fn presets_combine_without_duplicates() {
        let v = expand(
            Cloud::Public,
            &[Preset::AzureMonitorAgent, Preset::LogAnalyticsAgent],
            &[],
            &[],
        );
        let p = patterns(&v);
        let mut dedup = p.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), p.len());
        // The shared entry is attributed to the first preset that asked for it.
        let ods = v
            .iter()
            .find(|h| h.entry.to_string() == "*.ods.opinsights.azure.com")
            .unwrap();
        assert_eq!(ods.preset, Preset::AzureMonitorAgent);
    }

    #[test]
    fn operations_manager_matches_the_2016_tables() {
        let v = expand(Cloud::Public, &[Preset::OperationsManager], &[], &[]);
        assert_eq!(
            patterns(&v),
            [
                "*.ods.opinsights.azure.com",
                "*.oms.opinsights.azure.com",
                "*.blob.core.windows.net",
                "service.systemcenteradvisor.com",
                "data.systemcenteradvisor.com",
                "scadvisor.accesscontrol.windows.net",
                "scadvisorservice.accesscontrol.windows.net",
                "*.systemcenteradvisor.com:80,443",
                "*.live.com:80,443",
                "*.microsoftonline.com:80,443",
                "login.windows.net:80,443",
            ]
        );
        assert!(v
            .iter()
            .all(|h| h.why.contains("source: proxy-firewall-settings.md (2016)")));
        assert_eq!(
            Preset::parse("operations-manager"),
            Some(Preset::OperationsManager)
        );
        let v = expand(Cloud::UsGov, &[Preset::OperationsManager], &[], &[]);
        assert_eq!(
            patterns(&v),
            [
                "*.ods.opinsights.azure.us",
                "*.oms.opinsights.azure.us",
                "*.blob.core.usgovcloudapi.net",
            ]
        );
    }

    #[test]
    fn every_pattern_is_a_valid_host_pattern() {
        let ws = [WorkspaceId::parse(WS).unwrap()];
        let rg = [Region::parse("eastus2").unwrap()];
        for cloud in Cloud::ALL {
            let (hosts, rejected) = expand_checked(cloud, &Preset::ALL, &ws, &rg);
            assert_eq!(rejected, Vec::<String>::new(), "{cloud}");
            for h in hosts {
                assert_eq!(
                    HostEntry::parse(&h.entry.to_string()).as_ref(),
                    Ok(&h.entry),
                    "{cloud}: {}",
                    h.entry
                );
            }
        }
    }
}
