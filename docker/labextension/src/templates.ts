/**
 * `jupyterlab-gpu-meter:templates`: starter projects in JupyterLab's launcher.
 *
 * Placeholder: the templates part of issue #13 fills it in (launcher items
 * backed by the server extension's `GET templates` / `POST templates/<slug>`).
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-gpu-meter:templates',
  description: 'Starter projects from the notebook image in the launcher.',
  autoStart: true,
  activate: (_app: JupyterFrontEnd): void => {
    // filled in by the templates part
  }
};

export default plugin;
